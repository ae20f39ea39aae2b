//! Decoding: positions, multi-document and List files, error messages, kinds, files.

mod common;

use std::path::Path;

use common::{decode, decode_one, render, FILE};
use sluice_api::kube::IntOrString;
use sluice_api::{decode_file, decode_str, load_paths, Diagnostic, Kind, Severity, Spec};

/// The only diagnostic of `text` (which must have exactly one).
fn only_diagnostic(text: &str) -> Diagnostic {
    let out = decode(text);
    assert_eq!(
        out.diagnostics.len(),
        1,
        "expected one diagnostic, got:\n{}",
        render(&out.diagnostics)
    );
    out.diagnostics.into_iter().next().expect("one")
}

const VS_WITH_TYPO: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  tls:
  - match:
    - port: 443
      sni_host:
      - www.google.com
    route:
    - destination:
        host: www.google.com
";

#[test]
fn unknown_field_suggests_the_closest_name_on_its_line() {
    let out = decode(VS_WITH_TYPO);
    assert!(
        out.resources.is_empty(),
        "a resource with an error is not returned"
    );
    let d = &out.diagnostics[0];
    assert_eq!(out.diagnostics.len(), 1);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.line, 11);
    assert_eq!(d.field, "spec.tls[0].match[0].sni_host");
    assert_eq!(
        d.to_string(),
        "t.yaml:11: VirtualService default/google: spec.tls[0].match[0].sni_host: unknown field \
         `sni_host`; did you mean `sni_hosts`?"
    );
}

#[test]
fn unknown_camel_case_field_suggests_camel_case() {
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - timout: 3s\n    route: [{destination: {host: a}}]\n",
    );
    assert_eq!((d.line, d.field.as_str()), (7, "spec.http[0].timout"));
    assert_eq!(d.message, "unknown field `timout`; did you mean `timeout`?");
}

#[test]
fn unknown_field_without_close_match_lists_the_fields() {
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec:\n  host: a\n  subsets:\n  - name: v1\n    zzz: 1\n",
    );
    assert_eq!((d.line, d.field.as_str()), (8, "spec.subsets[0].zzz"));
    assert_eq!(
        d.message,
        "unknown field `zzz`; expected one of `name`, `labels`, `trafficPolicy`, `traffic_policy`"
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let cases = [
        ("  http:\n  - timeout: 3\n    route: [{destination: {host: a}}]\n", 7, "spec.http[0].timeout",
         "expected a duration such as \"3s\", found integer `3`"),
        ("  http:\n  - timeout: 3 seconds\n    route: [{destination: {host: a}}]\n", 7, "spec.http[0].timeout",
         "invalid duration \"3 seconds\": expected a number with a unit (s, ms, m, h), e.g. \"3s\" or \"0.5s\""),
        ("  http:\n  - route:\n    - destination: {host: a, port: {number: eighty}}\n", 8,
         "spec.http[0].route[0].destination.port.number", "expected a non-negative integer, found string \"eighty\""),
        ("  http:\n  - route:\n    - destination: {host: a}\n      weight: -1.5\n", 9,
         "spec.http[0].route[0].weight", "expected an integer, found floating point `-1.5`"),
        ("  http: {route: []}\n", 6, "spec.http", "expected a list, found a mapping"),
        ("  http:\n  - retries: {attempts: 2, retryRemoteLocalities: maybe}\n    route: [{destination: {host: a}}]\n",
         7, "spec.http[0].retries.retryRemoteLocalities", "expected a boolean, found string \"maybe\""),
        ("  http:\n  - route:\n    - destination: a\n", 8, "spec.http[0].route[0].destination",
         "expected a mapping, found string \"a\""),
    ];
    for (spec, line, field, message) in cases {
        let text = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a]\n{spec}");
        let out = decode(&text);
        assert_eq!(
            out.diagnostics.len(),
            1,
            "{spec}: {}",
            render(&out.diagnostics)
        );
        let d = &out.diagnostics[0];
        assert_eq!(
            (d.line, d.field.as_str(), d.message.as_str()),
            (line, field, message),
            "{spec}"
        );
        assert!(d.is_error());
    }
}

#[test]
fn numeric_strings_yaml_1_1_booleans_and_nulls_decode_as_protobuf_json_does() {
    let r = decode_one(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: a\n  labels:\nspec:\n  hosts: [a.com]\n  addresses:\n  ports:\n  - number: \"80\"\n    name: http\n    protocol: http\n    targetPort: '8080'\n",
    );
    let Spec::ServiceEntry(se) = &r.spec else {
        panic!()
    };
    assert_eq!(se.ports[0].number, 80);
    assert_eq!(se.ports[0].target_port, Some(8080));
    assert_eq!(se.ports[0].protocol.as_deref(), Some("http"));
    assert!(se.addresses.is_empty());

    let r = decode_one(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {httpsRedirect: yes}\n",
    );
    let Spec::Gateway(gw) = &r.spec else { panic!() };
    assert!(gw.servers[0].tls.as_ref().is_some_and(|t| t.https_redirect));
}

#[test]
fn header_match_written_without_a_value_means_presence() {
    let r = decode_one(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - headers:\n        x-canary:\n    route: [{destination: {host: a}}]\n",
    );
    let Spec::VirtualService(vs) = &r.spec else {
        panic!()
    };
    assert_eq!(
        vs.http[0].matches[0].headers["x-canary"],
        Default::default()
    );
}

#[test]
fn snake_case_and_camel_case_spellings_are_equivalent() {
    let snake = VS_WITH_TYPO.replace("sni_host:", "sni_hosts:");
    let camel = VS_WITH_TYPO.replace("sni_host:", "sniHosts:");
    let a = decode_one(&snake);
    let b = decode_one(&camel);
    assert_eq!(a.spec, b.spec);
    let Spec::VirtualService(vs) = &a.spec else {
        panic!()
    };
    assert_eq!(vs.tls[0].matches[0].sni_hosts, ["www.google.com"]);
    // Validation reports camelCase paths; both spellings resolve to the user's line.
    assert_eq!(a.origin.line_of("spec.tls[0].match[0].sniHosts"), 11);
    assert_eq!(b.origin.line_of("spec.tls[0].match[0].sniHosts"), 11);

    let snake = decode_one(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec:\n  host: a\n  export_to: ['.']\n  traffic_policy:\n    tls: {mode: SIMPLE, ca_certificates: /ca.pem}\n",
    );
    let camel = decode_one(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec:\n  host: a\n  exportTo: ['.']\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem}\n",
    );
    assert_eq!(snake.spec, camel.spec);
}

#[test]
fn every_multi_word_field_accepts_its_protobuf_spelling() {
    // Istio's decoder accepts both JSON spellings of every protobuf field; ours does through a
    // serde alias on each multi-word field. Read the attribute block above each field.
    for (file, src) in [
        ("networking.rs", include_str!("../src/networking.rs")),
        ("mesh.rs", include_str!("../src/mesh.rs")),
    ] {
        let lines: Vec<&str> = src.lines().collect();
        let mut checked = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim().strip_prefix("pub ") else {
                continue;
            };
            let Some((name, _)) = rest.split_once(':') else {
                continue;
            };
            if !name.contains('_') || name.contains(' ') {
                continue;
            }
            let attrs: String = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim();
                    !(t.is_empty() || t.starts_with("pub ") || t.ends_with('{') || t.ends_with('}'))
                })
                .copied()
                .collect();
            // `#[serde(skip)]` fields are not read from YAML at all.
            assert!(
                attrs.contains(&format!("alias = \"{name}\""))
                    || attrs.contains("rename =")
                    || attrs.contains("#[serde(skip)]"),
                "{file}: field `{name}` has no snake_case alias"
            );
            checked += 1;
        }
        assert!(
            checked > 10,
            "{file}: only {checked} fields found; is the check still reading it?"
        );
    }
}

#[test]
fn multi_document_files_keep_file_lines_and_skip_empty_documents() {
    let text = "\
---
# nothing here
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: one
spec:
  hosts: [one.com]
---
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: two
  namespace: prod
spec:
  hosts: [two.com]
  http:
  - route:
    - destination:
        host: two.com
...
";
    let out = decode(text);
    assert!(out.diagnostics.is_empty(), "{}", render(&out.diagnostics));
    let got: Vec<(Kind, String, u32)> = out
        .resources
        .iter()
        .map(|r| (r.kind, r.key(), r.origin.line))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::ServiceEntry, "default/one".to_string(), 4),
            (Kind::VirtualService, "prod/two".to_string(), 12)
        ]
    );
    assert_eq!(
        out.resources[1]
            .origin
            .line_of("spec.http[0].route[0].destination.host"),
        22
    );
    assert_eq!(out.resources[1].origin.line_of("spec.http[0].route[0]"), 21);
    assert_eq!(out.resources[1].origin.line_of("spec.http[0]"), 20);
}

#[test]
fn an_error_drops_only_its_own_document() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: good}
spec: {hosts: [a.com]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad}
spec: {hosts: [a.com], resolutoin: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: also-good}
spec: {hosts: [b.com]}
";
    let out = decode(text);
    let names: Vec<&str> = out.resources.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(names, ["good", "also-good"]);
    assert_eq!(
        out.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:9: ServiceEntry default/bad: spec.resolutoin: unknown field `resolutoin`; did you mean `resolution`?"]
    );
}

#[test]
fn list_items_are_flattened_with_their_own_lines() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: Gateway
  metadata:
    name: gw
  spec:
    servers:
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ['*']
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata:
    name: vs
  spec:
    hosts: [a]
    http:
    - route:
      - destination:
          host: a
          subsett: v1
- apiVersion: v1
  kind: Service
  metadata: {name: svc, namespace: web}
  spec:
    ports:
    - {name: http, port: 80, targetPort: http}
";
    let out = decode(text);
    let got: Vec<(Kind, String, u32)> = out
        .resources
        .iter()
        .map(|r| (r.kind, r.key(), r.origin.line))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::Gateway, "default/gw".to_string(), 4),
            (Kind::Service, "web/svc".to_string(), 23)
        ]
    );
    assert_eq!(out.resources[0].origin.line_of("spec.servers[0].hosts"), 11);
    let Spec::Service(svc) = &out.resources[1].spec else {
        panic!()
    };
    assert_eq!(
        svc.ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(
        out.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:22: VirtualService default/vs: spec.http[0].route[0].destination.subsett: unknown field `subsett`; did you mean `subset`?"]
    );
}

#[test]
fn unknown_kinds_are_skipped_with_a_warning() {
    let out = decode(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: sleep\n  labels: {version: 1}\nspec: {replicas: 1}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: foo}\n",
    );
    // A Namespace is read, quietly: `sluice analyze` uses it.
    let kinds: Vec<Kind> = out.resources.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::Namespace]);
    assert_eq!(
        out.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:2: Deployment default/sleep: kind: warning: kind Deployment is not used by sluice; ignored"]
    );
    assert!(!out.has_errors());
}

#[test]
fn a_misspelled_kind_is_an_error_with_a_suggestion() {
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v1\nkind: VirtualSevice\nmetadata: {name: a}\n",
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "unknown kind VirtualSevice (did you mean VirtualService?)"
    );
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntery\nmetadata: {name: a}\n",
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "unknown kind ServiceEntery (did you mean ServiceEntry?)"
    );
    // Any other kind in an Istio group is unknown to Istio as well.
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v1\nkind: TrafficSplit\nmetadata: {name: a}\n",
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "unknown kind TrafficSplit: networking.istio.io has no such kind"
    );
}

#[test]
fn a_request_authentication_is_a_resource_sluice_enforces() {
    let out = decode_str(
        Path::new("t.yaml"),
        "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: a, namespace: ns}\nspec:\n  jwtRules:\n  - issuer: https://issuer.example\n    jwksUri: https://issuer.example/keys\n",
    );
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert_eq!(out.resources.len(), 1);
    let res = &out.resources[0];
    assert_eq!(res.kind, sluice_api::Kind::RequestAuthentication);
    assert_eq!(res.api_version, "security.istio.io/v1beta1");
    let Spec::RequestAuthentication(ra) = &res.spec else {
        panic!("{:?}", res.spec);
    };
    assert_eq!(
        ra.jwt_rules[0].issuer.as_deref(),
        Some("https://issuer.example")
    );
    // What travels over xDS is the spec as written.
    assert_eq!(
        res.spec_json().unwrap()["jwtRules"][0]["jwksUri"],
        "https://issuer.example/keys"
    );
}

#[test]
fn istio_kinds_sluice_does_not_enforce_are_valid_with_a_warning() {
    // The smallest spec Istio accepts for each (a WorkloadGroup needs a template, a WasmPlugin
    // a url).
    for (api_version, kind, spec) in [
        ("networking.istio.io/v1", "WorkloadGroup", "{template: {}}"),
        ("networking.istio.io/v1beta1", "ProxyConfig", "{}"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter", "{}"),
        (
            "extensions.istio.io/v1alpha1",
            "WasmPlugin",
            "{url: 'oci://a/b'}",
        ),
        (
            "extensions.istio.io/v1alpha1",
            "TrafficExtension",
            "{lua: {inlineCode: 'x = 1'}}",
        ),
    ] {
        let d = only_diagnostic(&format!(
            "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: a}}\nspec: {spec}\n"
        ));
        assert_eq!(d.severity, Severity::Warning, "{kind}");
        assert!(
            d.message.starts_with(&format!("SLU0003: {kind} ("))
                && d.message.contains("does not enforce"),
            "{d}"
        );
    }
}

#[test]
fn an_unsupported_api_version_lists_the_accepted_ones() {
    let d = only_diagnostic(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: a}\nspec: {}\n",
    );
    assert_eq!(
        d.to_string(),
        "t.yaml:1: VirtualService default/a: apiVersion: apiVersion networking.istio.io/v2 is not \
         supported for VirtualService; use one of networking.istio.io/v1, \
         networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
    );
    let d = only_diagnostic("kind: Service\nmetadata: {name: a}\n");
    assert_eq!(
        (d.line, d.message.as_str()),
        (1, "apiVersion is required; Service accepts v1")
    );
}

#[test]
fn name_and_kind_are_required_and_namespace_defaults() {
    let d =
        only_diagnostic("apiVersion: v1\nkind: Service\nmetadata:\n  namespace: web\nspec: {}\n");
    assert_eq!(
        d.to_string(),
        "t.yaml:3: Service: metadata.name: metadata.name is required"
    );
    let d = only_diagnostic("apiVersion: v1\nmetadata: {name: a}\n");
    assert_eq!(d.to_string(), "t.yaml:1: kind: kind is required");
    let d = only_diagnostic("- just\n- a list\n");
    assert_eq!(
        d.message,
        "expected a Kubernetes object: a mapping with apiVersion, kind and metadata"
    );
    let r = decode_one("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n");
    assert_eq!(r.meta.namespace, "default");
}

#[test]
fn unknown_top_level_fields_are_warned_about() {
    let out = decode("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nsepc: {host: a}\n");
    assert_eq!(out.resources.len(), 1);
    assert_eq!(
        out.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:4: DestinationRule default/a: sepc: warning: unknown top-level field `sepc` is ignored; did you mean `spec`?"]
    );
}

#[test]
fn yaml_syntax_errors_point_at_the_line() {
    let out = decode("apiVersion: v1\nkind: Service\nmetadata:\n  name: [a\nspec: {}\n");
    assert!(out.resources.is_empty());
    assert_eq!(out.diagnostics.len(), 1);
    let d = &out.diagnostics[0];
    assert!(d.is_error());
    assert_eq!(d.resource, None);
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
    assert!((4..=5).contains(&d.line), "{d}");
    assert!(d
        .to_string()
        .starts_with(&format!("{FILE}:{}: invalid YAML", d.line)));

    let out = decode("a: 1\na: 2\n");
    assert_eq!(
        out.diagnostics[0].line, 2,
        "duplicate keys are an error, as in Kubernetes"
    );
}

#[test]
fn json_files_are_yaml_too() {
    let text = "{\n\t\"apiVersion\": \"networking.istio.io/v1\",\n\t\"kind\": \"ServiceEntry\",\n\t\"metadata\": {\"name\": \"a\"},\n\t\"spec\": {\n\t\t\"hosts\": [\"a.com\"],\n\t\t\"ports\": [{\"number\": 80, \"name\": \"http\", \"protocol\": \"HTTP\"}]\n\t}\n}\n";
    let out = decode_str(Path::new("se.json"), text);
    assert!(out.diagnostics.is_empty(), "{}", render(&out.diagnostics));
    let r = &out.resources[0];
    assert_eq!(r.origin.line, 2);
    assert_eq!(r.origin.line_of("spec.ports[0].number"), 7);
}

#[test]
fn secrets_merge_base64_data_and_string_data() {
    let r = decode_one(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: istio-system}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: Y2VydA==\n  ca.crt: b2xk\nstringData:\n  ca.crt: new\n",
    );
    let Spec::Secret { secret_type, data } = &r.spec else {
        panic!()
    };
    assert_eq!(secret_type.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(data["tls.crt"], b"cert");
    assert_eq!(data["ca.crt"], b"new");

    let d = only_diagnostic(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  tls.key: not*base64\n",
    );
    assert_eq!((d.line, d.field.as_str()), (5, "data.tls.key"));
    assert!(d.message.starts_with("invalid base64"), "{d}");
}

const MESH_CONFIGMAP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    accessLogFile: /dev/stdout
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

#[test]
fn the_istio_configmap_carries_the_mesh_config() {
    let r = decode_one(MESH_CONFIGMAP);
    let Spec::ConfigMap {
        mesh: Some(mesh),
        data,
    } = &r.spec
    else {
        panic!("no mesh")
    };
    assert!(data["mesh"].contains("REGISTRY_ONLY"));
    assert_eq!(mesh.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(
        mesh.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref()),
        Some("REGISTRY_ONLY")
    );
    // Any other ConfigMap is just data.
    let r = decode_one(&MESH_CONFIGMAP.replace("name: istio\n", "name: other\n"));
    assert!(matches!(&r.spec, Spec::ConfigMap { mesh: None, .. }));
}

#[test]
fn mesh_config_errors_point_at_data_mesh_and_the_embedded_line() {
    let d = only_diagnostic(
        &MESH_CONFIGMAP.replace("accessLogFile: /dev/stdout", "accessLogFile: [a, b]"),
    );
    assert_eq!(
        d.to_string(),
        "t.yaml:7: ConfigMap istio-system/istio: data.mesh: invalid mesh config at accessLogFile \
         (line 1 of the mesh text): expected a string, found a list"
    );
    let d = only_diagnostic(&MESH_CONFIGMAP.replace("mode: REGISTRY_ONLY", "mode: [REGISTRY_ONLY"));
    assert_eq!((d.line, d.field.as_str()), (7, "data.mesh"));
    assert!(d.message.starts_with("invalid mesh config (line "), "{d}");
}

#[test]
fn ingress_v1_shape() {
    let r = decode_one(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\nspec:\n  ingressClassName: istio\n  rules:\n  - host: a.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: web\n            port: {name: http}\n",
    );
    let Spec::Ingress(ing) = &r.spec else {
        panic!()
    };
    assert_eq!(ing.ingress_class_name.as_deref(), Some("istio"));
    let p = &ing.rules[0].http.as_ref().expect("http").paths[0];
    assert_eq!(
        p.backend.service(),
        Some(("web", Some(IntOrString::String("http".into()))))
    );
    assert_eq!(p.path_type.as_deref(), Some("Prefix"));
}

#[test]
fn endpoints_and_ingress_class() {
    let out = decode(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{ip: 10.0.0.1}]\n  ports: [{name: http, port: 8080}]\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: istio}\nspec: {controller: istio.io/ingress-controller}\n",
    );
    assert!(out.diagnostics.is_empty(), "{}", render(&out.diagnostics));
    let Spec::Endpoints(subsets) = &out.resources[0].spec else {
        panic!()
    };
    assert_eq!(subsets[0].addresses[0].ip, "10.0.0.1");
    assert_eq!(subsets[0].ports[0].port, 8080);
    let Spec::IngressClass(class) = &out.resources[1].spec else {
        panic!()
    };
    assert_eq!(class.controller, "istio.io/ingress-controller");
}

#[test]
fn load_paths_walks_directories_in_order_and_skips_what_is_not_config() {
    let dir = std::env::temp_dir().join(format!("sluice-api-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let se = |name: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec: {{hosts: [{name}.com]}}\n")
    };
    let files = [
        ("b.yaml", se("b")),
        ("a.yml", se("a")),
        ("sub/c.json", se("c")),
        ("sub/deeper/d.yaml", se("d")),
        (".hidden.yaml", se("hidden")),
        (".#a.yaml", se("lock")),
        ("a.yaml~", se("backup")),
        ("notes.txt", "not yaml: [".to_string()),
        ("..data/e.yaml", se("configmap-volume-internal")),
    ];
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let explicit = dir.join("notes-explicit.conf");
    std::fs::write(&explicit, se("explicit")).expect("write");
    let missing = dir.join("missing.yaml");

    let out = load_paths(&[
        dir.clone(),
        explicit.clone(),
        missing.clone(),
        dir.join("b.yaml"),
    ]);
    let names: Vec<&str> = out.resources.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "explicit", "c", "d"]);
    assert_eq!(out.diagnostics.len(), 1, "{}", render(&out.diagnostics));
    let d = &out.diagnostics[0];
    assert!(d.is_error());
    assert_eq!(d.file, missing.display().to_string());
    assert!(d.message.starts_with("cannot read: "), "{d}");

    let d = decode_file(&missing);
    assert!(d.diagnostics[0].message.starts_with("cannot read file: "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn same_kind_name_in_another_api_group_is_ignored() {
    let d = only_diagnostic(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {gatewayClassName: istio}\n",
    );
    assert_eq!(
        d.to_string(),
        "t.yaml:1: Gateway default/a: apiVersion: warning: SLU0003: Gateway \
         (gateway.networking.k8s.io/v1) is not served by sluice (it does not implement the \
         Gateway API); only `sluice analyze` reads it, for the VirtualServices that name it"
    );
    let d = only_diagnostic("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n");
    assert_eq!(
        d.message,
        "kind ServiceAccount is not used by sluice; ignored"
    );
}

// === security.istio.io ===

const SECURITY_KINDS: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    match_labels: {app: httpbin}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
        notNamespaces: [prod]
        ipBlocks: [10.0.0.0/8]
        not_remote_ip_blocks: [1.2.3.4]
    to:
    - operation:
        hosts: [\"*.example.com\"]
        ports: [\"8080\"]
        methods: [GET]
        notPaths: [/admin*]
    when:
    - key: request.headers[x-token]
      notValues: [secret]
";

#[test]
fn security_kinds_decode_in_both_versions_with_aliases() {
    let out = decode(SECURITY_KINDS);
    assert!(
        out.diagnostics.is_empty(),
        "unexpected diagnostics:\n{}",
        render(&out.diagnostics)
    );
    assert_eq!(out.resources.len(), 2);
    assert_eq!(out.resources[0].kind, Kind::PeerAuthentication);
    let Spec::PeerAuthentication(pa) = &out.resources[0].spec else {
        panic!("not a PeerAuthentication: {:?}", out.resources[0].spec);
    };
    assert_eq!(pa.selector.as_ref().map(|s| s.match_labels.len()), Some(1));
    assert_eq!(
        pa.mtls.as_ref().and_then(|m| m.mode.as_deref()),
        Some("STRICT")
    );
    let ports = pa.port_level_mtls.as_ref().expect("portLevelMtls");
    assert_eq!(ports["8080"].mode.as_deref(), Some("DISABLE"));

    assert_eq!(out.resources[1].kind, Kind::AuthorizationPolicy);
    assert_eq!(out.resources[1].api_version, "security.istio.io/v1beta1");
    let Spec::AuthorizationPolicy(ap) = &out.resources[1].spec else {
        panic!("not an AuthorizationPolicy");
    };
    assert_eq!(ap.action(), "DENY");
    let rules = ap.rules.as_ref().expect("rules");
    let src = rules[0].from.as_ref().expect("from")[0]
        .source
        .as_ref()
        .expect("source");
    assert_eq!(src.principals, ["cluster.local/ns/default/sa/sleep"]);
    assert_eq!(src.not_namespaces, ["prod"]);
    assert_eq!(src.not_remote_ip_blocks, ["1.2.3.4"]);
    let op = rules[0].to.as_ref().expect("to")[0]
        .operation
        .as_ref()
        .expect("operation");
    assert_eq!(op.ports, ["8080"]);
    assert_eq!(op.not_paths, ["/admin*"]);
    assert_eq!(rules[0].when[0].key, "request.headers[x-token]");
    assert_eq!(rules[0].when[0].not_values, ["secret"]);
    // Field positions work for the new kinds too.
    assert_eq!(
        out.resources[1]
            .origin
            .line_of("spec.rules[0].to[0].operation.ports"),
        28
    );
}

#[test]
fn security_kinds_reject_typos_and_wrong_versions() {
    let d = only_diagnostic(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n\
         spec:\n  rules:\n  - to:\n    - operation:\n        method: [GET]\n",
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.line, 8);
    assert_eq!(d.field, "spec.rules[0].to[0].operation.method");
    assert!(
        d.message.contains("did you mean `methods`?"),
        "{}",
        d.message
    );

    let d = only_diagnostic(
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n",
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "apiVersion security.istio.io/v1alpha1 is not supported for PeerAuthentication; use one \
         of security.istio.io/v1, security.istio.io/v1beta1"
    );

    // `spec: {}` is a valid ALLOW-nothing policy; a missing spec is the same.
    let out = decode(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {}\n",
    );
    assert!(out.diagnostics.is_empty(), "{}", render(&out.diagnostics));
    let Spec::AuthorizationPolicy(ap) = &out.resources[0].spec else {
        panic!("not an AuthorizationPolicy");
    };
    assert_eq!(ap.action(), "ALLOW");
    assert!(ap.rules.is_none());
}
