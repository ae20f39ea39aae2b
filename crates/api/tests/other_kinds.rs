//! Istio's kinds that sluice validates with Istio's webhook rules (RequestAuthentication,
//! Telemetry, WorkloadGroup, ProxyConfig, EnvoyFilter, WasmPlugin, TrafficExtension): for each
//! rule of Istio's webhook or CRD schema, an input that breaks it (refused, with the message on
//! the field's line) and the nearest input that passes (accepted with warning SLU0003 only, or
//! with nothing for RequestAuthentication and Telemetry, which sluice enforces). None becomes a
//! resource but a valid RequestAuthentication or Telemetry.

mod common;

use common::{decode, render};
use sluice_api::{Diagnostic, Kind, Severity, Spec};

use Severity::{Error, Warning};

/// Lines before the spec's content in [`doc`]: spec line `n` is file line `HEADER_LINES + n`.
const HEADER_LINES: u32 = 6;

/// The apiVersion the tests write for `kind`.
fn api_version(kind: &str) -> &'static str {
    match kind {
        "RequestAuthentication" => "security.istio.io/v1",
        "Telemetry" => "telemetry.istio.io/v1",
        "WorkloadGroup" => "networking.istio.io/v1",
        "ProxyConfig" => "networking.istio.io/v1beta1",
        "EnvoyFilter" => "networking.istio.io/v1alpha3",
        "WasmPlugin" | "TrafficExtension" => "extensions.istio.io/v1alpha1",
        other => panic!("no apiVersion for {other}"),
    }
}

/// A document of `kind` named `ns/t` whose spec is `spec` (written at column 0).
fn doc(kind: &str, spec: &str) -> String {
    let mut out = format!(
        "apiVersion: {}\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\nspec:\n",
        api_version(kind)
    );
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Telemetry is validated with these kinds but enforced: no SLU0003 for it.
fn is_slu0003(d: &Diagnostic) -> bool {
    d.severity == Warning && d.field == "kind" && d.message.starts_with("SLU0003: ")
}

/// Whether a valid document of `kind` is enforced: it becomes a resource, without SLU0003.
fn enforced(kind: &str) -> bool {
    kind == "RequestAuthentication" || kind == "Telemetry"
}

/// What a valid document decodes to: SLU0003 and no resource, or, for RequestAuthentication and
/// Telemetry, one resource and no SLU0003.
fn valid_outcome(out: &sluice_api::LoadResult) -> bool {
    let slu0003 = out.diagnostics.iter().any(is_slu0003);
    let enforced_resource = out
        .resources
        .iter()
        .any(|r| matches!(r.kind, Kind::RequestAuthentication | Kind::Telemetry));
    if enforced_resource {
        !slu0003 && out.resources.len() == 1
    } else {
        slu0003 && out.resources.is_empty()
    }
}

/// Decodes `text`; it must be accepted: no error, the SLU0003 warning, no resource (but the
/// analysis-only one of a Telemetry).
fn accepted(text: &str) -> Vec<Diagnostic> {
    let out = decode(text);
    let errors: Vec<_> = out
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .cloned()
        .collect();
    assert!(
        errors.is_empty(),
        "refused:\n{}in:\n{text}",
        render(&errors)
    );
    assert!(
        valid_outcome(&out),
        "not SLU0003 without a resource, nor an enforced resource:\n{}in:\n{text}",
        render(&out.diagnostics)
    );
    out.diagnostics
}

/// One rule: `bad` breaks it at `field` (spec line `line`; 0 for `spec:` itself), `good` is the
/// nearest input Istio accepts.
struct Case {
    kind: &'static str,
    bad: &'static str,
    severity: Severity,
    field: &'static str,
    line: u32,
    message: &'static str,
    good: &'static str,
}

/// Runs every case and reports all failures at once.
fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let out = decode(&doc(c.kind, c.bad));
        let warning = if c.severity == Warning {
            "warning: "
        } else {
            ""
        };
        let expected = format!(
            "t.yaml:{}: {} ns/t: {}: {warning}{}",
            HEADER_LINES + c.line,
            c.kind,
            c.field,
            c.message
        );
        if !out.diagnostics.iter().any(|d| d.to_string() == expected) {
            failures.push(format!(
                "expected: {expected}\n  got:\n{}",
                render(&out.diagnostics)
            ));
        }
        // Only a valid Telemetry (for `sluice analyze`) or RequestAuthentication becomes a
        // resource.
        let refused_kind_became_one = c.severity == Error && !out.resources.is_empty();
        if refused_kind_became_one
            || out
                .resources
                .iter()
                .any(|r| r.kind != Kind::Telemetry && r.kind != Kind::RequestAuthentication)
        {
            failures.push(format!("{expected}\n  became a resource"));
        }
        let refused = out.diagnostics.iter().any(Diagnostic::is_error);
        let slu0003 = out.diagnostics.iter().any(is_slu0003);
        match c.severity {
            Error if slu0003 => failures.push(format!("{expected}\n  refused but still SLU0003")),
            Warning if refused || !valid_outcome(&out) => failures.push(format!(
                "{expected}\n  a warning must leave the document valid:\n{}",
                render(&out.diagnostics)
            )),
            _ => {}
        }
        let good = decode(&doc(c.kind, c.good));
        let bad: Vec<_> = good
            .diagnostics
            .iter()
            .filter(|d| d.is_error() || d.message == c.message)
            .cloned()
            .collect();
        if !bad.is_empty() || !valid_outcome(&good) {
            failures.push(format!(
                "good input for `{}` is not accepted cleanly:\n{}",
                c.message,
                render(&good.diagnostics)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_full_valid_document_of_each_kind_is_accepted_with_slu0003() {
    let docs = [
        (
            "RequestAuthentication",
            "selector:\n  matchLabels: {app: web}\njwtRules:\n- issuer: https://issuer.example\n  jwksUri: https://issuer.example/keys.json\n  audiences: [web]\n  fromHeaders:\n  - name: x-jwt\n    prefix: 'Bearer '\n  fromParams: [token]\n  fromCookies: [session]\n  outputPayloadToHeader: x-payload\n  forwardOriginalToken: true\n  outputClaimToHeaders:\n  - {header: x-sub, claim: sub}\n  timeout: 2s\n  spaceDelimitedClaims: [scope]\n  presence: OPTIONAL\n",
        ),
        (
            "Telemetry",
            "targetRefs:\n- {kind: Service, group: '', name: web}\nmetrics:\n- providers: [{name: prometheus}]\n  reportingInterval: 10s\n  overrides:\n  - match: {metric: REQUEST_COUNT, mode: SERVER}\n    tagOverrides:\n      source_x: {value: 'upstream_peer.labels[\"x\"]'}\n      destination_y: {operation: REMOVE}\n  - match: {customMetric: my_metric}\n    disabled: true\ntracing:\n- providers: [{name: zipkin}]\n  randomSamplingPercentage: 10.5\n  customTags:\n    team: {literal: {value: web}}\n    pod: {environment: {name: POD_NAME, defaultValue: unknown}}\n    ua: {header: {name: user-agent}}\naccessLogging:\n- providers: [{name: envoy}]\n  match: {mode: CLIENT}\n  filter: {expression: 'response.code >= 400 && request.headers[\"x\"] != \"y\"'}\n",
        ),
        (
            "WorkloadGroup",
            "metadata:\n  labels: {app: vm, example.com/tier: backend}\n  annotations: {note: anything goes}\ntemplate:\n  serviceAccount: vm-sa\n  network: vm-net\n  ports: {http: 8080}\n  labels: {version: v1}\nprobe:\n  periodSeconds: 5\n  initialDelaySeconds: 1\n  httpGet:\n    path: /ready\n    port: 8080\n    scheme: HTTPS\n    httpHeaders:\n    - {name: x-probe, value: '1'}\n",
        ),
        (
            "ProxyConfig",
            "selector:\n  matchLabels: {app: web}\nconcurrency: 0\nenvironmentVariables: {ISTIO_META_X: y}\nimage: {imageType: distroless}\n",
        ),
        (
            "EnvoyFilter",
            "workloadSelector:\n  labels: {app: web}\npriority: -5\nconfigPatches:\n- applyTo: HTTP_FILTER\n  match:\n    context: SIDECAR_INBOUND\n    proxy: {proxyVersion: '^1\\.2[0-9].*'}\n    listener:\n      portNumber: 8080\n      filterChain:\n        filter:\n          name: envoy.filters.network.http_connection_manager\n          subFilter: {name: envoy.filters.http.router}\n  patch:\n    operation: INSERT_BEFORE\n    filterClass: AUTHZ\n    value:\n      name: my.lua\n      typed_config:\n        '@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\n        inline_code: 'function envoy_on_request(h) end'\n        nested: {list: [1, two, {three: null}], flag: true}\n- applyTo: CLUSTER\n  match: {context: SIDECAR_OUTBOUND, cluster: {service: a.example.com}}\n  patch: {operation: REMOVE}\n- applyTo: HTTP_ROUTE\n  match:\n    context: WAYPOINT\n    waypoint: {route: {name: default}, portNumber: 80}\n  patch: {operation: MERGE, value: {timeout: 5s}}\n",
        ),
        (
            "WasmPlugin",
            "selector:\n  matchLabels: {istio: ingressgateway}\nurl: oci://registry.example/filters/auth:v1\nsha256: 1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210\nimagePullPolicy: IfNotPresent\nimagePullSecret: pull-secret\nphase: AUTHN\npriority: 10\nfailStrategy: FAIL_OPEN\ntype: HTTP\npluginName: auth\npluginConfig:\n  anything: [1, {nested: true}]\n  more: {deep: {deeper: 'yes'}}\nvmConfig:\n  env:\n  - {name: A, value: x}\n  - {name: POD_NAME, valueFrom: HOST}\nmatch:\n- mode: SERVER\n  ports: [{number: 8080}, {number: 9090}]\n",
        ),
        (
            "TrafficExtension",
            "targetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: edge}\nphase: STATS\npriority: -3\nmatch:\n- mode: CLIENT_AND_SERVER\n  ports: [{number: 443}]\nwasm:\n  url: https://filters.example/stats.wasm\n  sha256: 0c3a5be2a0a1d4c2e11c3bd5de5f3a9c57a4a1e2bbd1a86e41de1e73b4f0a9d2\n  imagePullPolicy: Always\n  pluginName: stats\n  failStrategy: FAIL_RELOAD\n  type: NETWORK\n  verificationKey: key\n  pluginConfig: {counters: [rx, tx], labels: {team: edge}}\n  vmConfig:\n    env:\n    - {name: NODE, valueFrom: HOST}\n",
        ),
        (
            "TrafficExtension",
            "selector:\n  matchLabels: {app: shop}\nphase: AUTHZ\nlua:\n  inlineCode: |\n    function envoy_on_response(handle)\n      handle:headers():add('x-served-by', 'shop')\n    end\n",
        ),
    ];
    for (kind, spec) in docs {
        let diags = accepted(&doc(kind, spec));
        if enforced(kind) {
            assert!(
                diags.is_empty(),
                "{kind}: no warning expected:\n{}",
                render(&diags)
            );
            continue;
        }
        assert_eq!(
            diags.len(),
            1,
            "{kind}: only SLU0003 expected:\n{}",
            render(&diags)
        );
        assert_eq!(
            diags[0].to_string(),
            format!(
                "t.yaml:2: {kind} ns/t: kind: warning: SLU0003: {kind} ({}) is valid Istio \
                 config, but sluice does not enforce it: what it asks for does not happen",
                api_version(kind).split('/').next().unwrap_or_default()
            )
        );
    }
}

#[test]
fn every_served_api_version_is_accepted_and_others_are_refused() {
    for (api, kind, spec) in [
        ("security.istio.io/v1beta1", "RequestAuthentication", "{}"),
        ("telemetry.istio.io/v1alpha1", "Telemetry", "{}"),
        (
            "networking.istio.io/v1alpha3",
            "WorkloadGroup",
            "{template: {}}",
        ),
        (
            "networking.istio.io/v1beta1",
            "WorkloadGroup",
            "{template: {}}",
        ),
    ] {
        accepted(&format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: a}}\nspec: {spec}\n"
        ));
    }
    for (api, kind, list) in [
        (
            "networking.istio.io/v1",
            "EnvoyFilter",
            "networking.istio.io/v1alpha3",
        ),
        (
            "networking.istio.io/v1",
            "ProxyConfig",
            "networking.istio.io/v1beta1",
        ),
        (
            "extensions.istio.io/v1",
            "WasmPlugin",
            "extensions.istio.io/v1alpha1",
        ),
        (
            "security.istio.io/v1alpha1",
            "RequestAuthentication",
            "security.istio.io/v1, security.istio.io/v1beta1",
        ),
    ] {
        let out = decode(&format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: a}}\nspec: {{}}\n"
        ));
        let texts: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [format!(
                "t.yaml:1: {kind} default/a: apiVersion: apiVersion {api} is not supported for \
                 {kind}; use one of {list}"
            )]
        );
    }
    let out = decode("kind: Telemetry\nmetadata: {name: a}\nspec: {}\n");
    assert_eq!(
        out.diagnostics[0].message,
        "apiVersion is required; Telemetry accepts telemetry.istio.io/v1, \
         telemetry.istio.io/v1alpha1"
    );
    assert!(out.diagnostics[0].is_error());
    // The same kind name in a group that is not Istio's is another object: ignored.
    let out = decode("apiVersion: example.com/v1\nkind: Telemetry\nmetadata: {name: a}\n");
    let texts: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "t.yaml:1: Telemetry default/a: apiVersion: warning: kind Telemetry of \
          example.com/v1 is not used by sluice; ignored"
        ]
    );
}

#[test]
fn unknown_fields_are_refused_with_a_suggestion() {
    let out = decode(&doc("RequestAuthentication", "jwtRule:\n- issuer: a\n"));
    let texts: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "t.yaml:7: RequestAuthentication ns/t: spec.jwtRule: unknown field `jwtRule`; did \
          you mean `jwtRules`?"
        ]
    );
    let out = decode(&doc(
        "WasmPlugin",
        "url: oci://a/b\nvmConfig:\n  env:\n  - {name: a, valueFom: HOST}\n",
    ));
    let d = &out.diagnostics[0];
    assert_eq!(
        (d.line, d.field.as_str(), d.message.as_str()),
        (
            10,
            "spec.vmConfig.env[0].valueFom",
            "unknown field `valueFom`; did you mean `valueFrom`?"
        )
    );
    // Protobuf's snake_case spelling is Istio's too.
    accepted(&doc(
        "EnvoyFilter",
        "workload_selector: {labels: {app: a}}\nconfig_patches:\n- apply_to: CLUSTER\n  patch: {operation: ADD, value: {name: c}}\n",
    ));
}

#[test]
fn free_form_values_must_still_be_mappings() {
    let out = decode(&doc("WasmPlugin", "url: oci://a/b\npluginConfig: [1, 2]\n"));
    let d = &out.diagnostics[0];
    assert_eq!(
        (d.severity, d.field.as_str(), d.message.as_str()),
        (
            Error,
            "spec.pluginConfig",
            "expected a mapping, found a list"
        )
    );
    let out = decode(&doc(
        "EnvoyFilter",
        "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: ADD, value: just text}\n",
    ));
    let d = &out.diagnostics[0];
    assert_eq!(
        (d.severity, d.field.as_str()),
        (Error, "spec.configPatches[0].patch.value")
    );
}

#[test]
fn metadata_rules_apply() {
    let out = decode(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: Bad_Name\n  annotations: {istio.io/dry-run: 'true'}\nspec: {}\n",
    );
    let texts: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "t.yaml:4: Telemetry default/Bad_Name: metadata.name: invalid name \"Bad_Name\": use \
             lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
            "t.yaml:5: Telemetry default/Bad_Name: metadata.annotations.istio.io/dry-run: \
             annotation istio.io/dry-run is supported on AuthorizationPolicy only; remove it",
        ]
    );
    let out = decode("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {}\n");
    assert_eq!(out.diagnostics[0].message, "metadata.name is required");
}

#[test]
fn request_authentication_rules() {
    const K: &str = "RequestAuthentication";
    run(&[
        Case {
            kind: K,
            bad: "selector:\n  matchLabels: {app: a}\ntargetRef: {kind: Service, name: a}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "only one of selector, targetRef or targetRefs can be set",
            good: "targetRef: {kind: Service, name: a}\n",
        },
        Case {
            kind: K,
            bad: "targetRef: {kind: Service}\n",
            severity: Error,
            field: "spec.targetRef.name",
            line: 1,
            message: "targetRef name must be set",
            good: "targetRef: {kind: Service, name: a}\n",
        },
        Case {
            kind: K,
            bad: "targetRefs:\n- kind: Service\n  name: a\n  namespace: other\n",
            severity: Error,
            field: "spec.targetRefs[0].namespace",
            line: 4,
            message: "targetRef namespace must not be set; cross namespace referencing is not supported",
            good: "targetRefs:\n- kind: Service\n  name: a\n",
        },
        Case {
            kind: K,
            bad: "targetRef: {kind: Deployment, name: a}\n",
            severity: Error,
            field: "spec.targetRef.kind",
            line: 1,
            message: "targetRef must be to one of core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass but was core/Deployment",
            good: "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: a}\n",
        },
        Case {
            kind: K,
            bad: "targetRef: {kind: Serv_ice, name: a}\n",
            severity: Error,
            field: "spec.targetRef.kind",
            line: 1,
            message: "invalid kind \"Serv_ice\": expected a kind such as Service",
            good: "targetRef: {kind: Service, name: a}\n",
        },
        Case {
            kind: K,
            bad: "targetRef: {group: __, kind: Service, name: a}\n",
            severity: Error,
            field: "spec.targetRef.group",
            line: 1,
            message: "invalid group \"__\": expected a DNS subdomain such as gateway.networking.k8s.io, or \"\" for core",
            good: "targetRef: {group: '', kind: Service, name: a}\n",
        },
        Case {
            kind: K,
            bad: "selector:\n  matchLabels: {app: 'a*'}\n",
            severity: Error,
            field: "spec.selector.matchLabels.app",
            line: 2,
            message: "wildcard is not supported in a selector value: \"app=a*\"",
            good: "selector:\n  matchLabels: {app: a}\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- audiences: [a]\n",
            severity: Error,
            field: "spec.jwtRules[0].issuer",
            line: 2,
            message: "issuer or jwksUri must be non-empty string",
            good: "jwtRules:\n- audiences: [a]\n  jwksUri: https://keys.example/jwks\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  audiences: ['']\n",
            severity: Error,
            field: "spec.jwtRules[0].audiences[0]",
            line: 3,
            message: "audience must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  audiences: [b]\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  jwksUri: ftp://keys.example/jwks\n",
            severity: Error,
            field: "spec.jwtRules[0].jwksUri",
            line: 3,
            message: "invalid jwksUri \"ftp://keys.example/jwks\": url must have scheme http:// or https://",
            good: "jwtRules:\n- issuer: a\n  jwksUri: http://keys.example:8080/jwks\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  jwksUri: 'https://keys.example:port/jwks'\n",
            severity: Error,
            field: "spec.jwtRules[0].jwksUri",
            line: 3,
            message: "invalid jwksUri \"https://keys.example:port/jwks\": invalid port \":port\" after host",
            good: "jwtRules:\n- issuer: a\n  jwksUri: 'https://keys.example:443/jwks'\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  jwksUri: https://k.example/jwks\n  jwks: '{\"keys\": []}'\n",
            severity: Error,
            field: "spec.jwtRules[0]",
            line: 2,
            message: "only one of jwks or jwksUri can be set",
            good: "jwtRules:\n- issuer: a\n  jwks: '{\"keys\": []}'\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  jwks: '{\"keys\": [{\"kty\": \"XYZ\"}]}'\n",
            severity: Error,
            field: "spec.jwtRules[0].jwks",
            line: 3,
            message: "jwks parse error: key 0: invalid key type \"XYZ\"",
            good: "jwtRules:\n- issuer: a\n  jwks: '{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"AA\", \"y\": \"AA\"}]}'\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  jwks: '{\"kty\": \"RSA\", \"n\": \"AQ\", \"e\": \"AQAB\", \"d\": \"AQ\"}'\n",
            severity: Warning,
            field: "spec.jwtRules[0].jwks",
            line: 3,
            message: "jwks key at index 0 contains private key material; only public keys are used for verification",
            good: "jwtRules:\n- issuer: a\n  jwks: '{\"kty\": \"RSA\", \"n\": \"AQ\", \"e\": \"AQAB\"}'\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  fromHeaders:\n  - prefix: 'Bearer '\n",
            severity: Error,
            field: "spec.jwtRules[0].fromHeaders[0].name",
            line: 4,
            message: "location header name must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  fromHeaders:\n  - {name: authorization, prefix: 'Bearer '}\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  fromParams: ['']\n",
            severity: Error,
            field: "spec.jwtRules[0].fromParams[0]",
            line: 3,
            message: "location query must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  fromParams: [token]\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  fromCookies: ['']\n",
            severity: Error,
            field: "spec.jwtRules[0].fromCookies[0]",
            line: 3,
            message: "cookie name must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  fromCookies: [session]\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  outputClaimToHeaders:\n  - claim: sub\n    header: ':authority'\n",
            severity: Error,
            field: "spec.jwtRules[0].outputClaimToHeaders[0].header",
            line: 5,
            message: "header name \":authority\" is not a valid header name",
            good: "jwtRules:\n- issuer: a\n  outputClaimToHeaders:\n  - claim: sub\n    header: x_sub\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  outputClaimToHeaders:\n  - header: x-sub\n",
            severity: Error,
            field: "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            line: 4,
            message: "outputClaimToHeaders claim must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  outputClaimToHeaders:\n  - {header: x-sub, claim: sub}\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  timeout: 0.5ms\n",
            severity: Error,
            field: "spec.jwtRules[0].timeout",
            line: 3,
            message: "duration must be greater than 1ms",
            good: "jwtRules:\n- issuer: a\n  timeout: 1ms\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  spaceDelimitedClaims: [scope, '']\n",
            severity: Error,
            field: "spec.jwtRules[0].spaceDelimitedClaims[1]",
            line: 3,
            message: "claim name must be non-empty string",
            good: "jwtRules:\n- issuer: a\n  spaceDelimitedClaims: [scope]\n",
        },
        Case {
            kind: K,
            bad: "jwtRules:\n- issuer: a\n  presence: MANDATORY\n",
            severity: Error,
            field: "spec.jwtRules[0].presence",
            line: 3,
            message: "invalid value \"MANDATORY\"; expected one of OPTIONAL, REQUIRED",
            good: "jwtRules:\n- issuer: a\n  presence: REQUIRED\n",
        },
    ]);
}

#[test]
fn telemetry_rules() {
    const K: &str = "Telemetry";
    run(&[
        Case {
            kind: K,
            bad: "metrics:\n- providers:\n  - name: ''\n",
            severity: Error,
            field: "spec.metrics[0].providers[0].name",
            line: 3,
            message: "providers.name may not be empty",
            good: "metrics:\n- providers:\n  - name: prometheus\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- overrides:\n  - match: {customMetric: ''}\n",
            severity: Error,
            field: "spec.metrics[0].overrides[0].match.customMetric",
            line: 3,
            message: "customMetric may not be empty",
            good: "metrics:\n- overrides:\n  - match: {customMetric: mine}\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- overrides:\n  - match: {customMetric: mine, metric: REQUEST_COUNT}\n",
            severity: Error,
            field: "spec.metrics[0].overrides[0].match",
            line: 3,
            message: "only one of metric or customMetric can be set",
            good: "metrics:\n- overrides:\n  - match: {metric: REQUEST_COUNT}\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- overrides:\n  - match: {metric: REQUESTS}\n",
            severity: Error,
            field: "spec.metrics[0].overrides[0].match.metric",
            line: 3,
            message: "invalid value \"REQUESTS\"; expected one of ALL_METRICS, REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE, TCP_OPENED_CONNECTIONS, TCP_CLOSED_CONNECTIONS, TCP_SENT_BYTES, TCP_RECEIVED_BYTES, GRPC_REQUEST_MESSAGES, GRPC_RESPONSE_MESSAGES",
            good: "metrics:\n- overrides:\n  - match: {metric: ALL_METRICS}\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- overrides:\n  - tagOverrides:\n      foo: {}\n",
            severity: Error,
            field: "spec.metrics[0].overrides[0].tagOverrides.foo.value",
            line: 4,
            message: "tagOverrides.value must be set when operation is UPSERT",
            good: "metrics:\n- overrides:\n  - tagOverrides:\n      foo: {value: bar}\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- overrides:\n  - tagOverrides:\n      foo: {operation: REMOVE, value: ''}\n",
            severity: Error,
            field: "spec.metrics[0].overrides[0].tagOverrides.foo.value",
            line: 4,
            message: "tagOverrides.value must not be set when operation is REMOVE",
            good: "metrics:\n- overrides:\n  - tagOverrides:\n      foo: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "metrics:\n- reportingInterval: 0s\n",
            severity: Error,
            field: "spec.metrics[0].reportingInterval",
            line: 2,
            message: "must be a valid duration greater than 1ms",
            good: "metrics:\n- reportingInterval: 15s\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- randomSamplingPercentage: 100.5\n",
            severity: Error,
            field: "spec.tracing[0].randomSamplingPercentage",
            line: 2,
            message: "randomSamplingPercentage must be in range [0.0, 100.0]",
            good: "tracing:\n- randomSamplingPercentage: 100\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- customTags:\n    a: {literal: {value: ''}}\n",
            severity: Error,
            field: "spec.tracing[0].customTags.a.literal.value",
            line: 3,
            message: "literal tag value may not be empty",
            good: "tracing:\n- customTags:\n    a: {literal: {value: b}}\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- customTags:\n    a: {literal: {value: b}, header: {name: c}}\n",
            severity: Error,
            field: "spec.tracing[0].customTags.a",
            line: 3,
            message: "only one of literal, environment, header or formatter can be set",
            good: "tracing:\n- customTags:\n    a: {header: {name: c}}\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- customTags:\n    a: {environment: {defaultValue: x}}\n",
            severity: Error,
            field: "spec.tracing[0].customTags.a.environment.name",
            line: 3,
            message: "environment tag name may not be empty",
            good: "tracing:\n- customTags:\n    a: {environment: {name: HOME, defaultValue: x}}\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- providers: [{name: a}]\n- providers: [{name: b}]\n",
            severity: Warning,
            field: "spec.tracing",
            line: 1,
            message: "multiple tracing is not currently supported",
            good: "tracing:\n- providers: [{name: a}]\n",
        },
        Case {
            kind: K,
            bad: "tracing:\n- match: {mode: BOTH}\n",
            severity: Error,
            field: "spec.tracing[0].match.mode",
            line: 2,
            message: "invalid value \"BOTH\"; expected one of CLIENT_AND_SERVER, CLIENT, SERVER",
            good: "tracing:\n- match: {mode: CLIENT_AND_SERVER}\n",
        },
        Case {
            kind: K,
            bad: "accessLogging:\n- filter:\n    expression: 'response.code >= (400'\n",
            severity: Error,
            field: "spec.accessLogging[0].filter.expression",
            line: 3,
            message: "must be a valid CEL expression: column 22: syntax error: missing ')' at '<EOF>'",
            good: "accessLogging:\n- filter:\n    expression: 'response.code >= 400'\n",
        },
        Case {
            kind: K,
            bad: "accessLogging:\n- filter:\n    expression: 'response.code >='\n",
            severity: Error,
            field: "spec.accessLogging[0].filter.expression",
            line: 3,
            message: "must be a valid CEL expression: column 17: syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
            good: "accessLogging:\n- filter:\n    expression: 'response.code >= 500'\n",
        },
    ]);
}

#[test]
fn workload_group_rules() {
    const K: &str = "WorkloadGroup";
    run(&[
        Case {
            kind: K,
            bad: "metadata:\n  labels: {app: a}\n",
            severity: Error,
            field: "spec.template",
            line: 0,
            message: "template is required",
            good: "metadata:\n  labels: {app: a}\ntemplate: {}\n",
        },
        Case {
            kind: K,
            bad: "metadata:\n  labels: {-app: a}\ntemplate: {}\n",
            severity: Error,
            field: "spec.metadata.labels.-app",
            line: 2,
            message: "invalid labels: invalid label key \"-app\"",
            good: "metadata:\n  labels: {app.example.com/name: a}\ntemplate: {}\n",
        },
        Case {
            kind: K,
            bad: "template:\n  address: unix:///var/run/a.sock\n  ports: {http: 80}\n",
            severity: Error,
            field: "spec.template.ports",
            line: 3,
            message: "UDS may not include ports",
            good: "template:\n  address: unix:///var/run/a.sock\n",
        },
        Case {
            kind: K,
            bad: "template:\n  ports: {http_web: 80}\n",
            severity: Error,
            field: "spec.template.ports.http_web",
            line: 2,
            message: "invalid port name \"http_web\"",
            good: "template:\n  ports: {http-web: 80}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  periodSeconds: -1\n  tcpSocket: {port: 80}\n",
            severity: Error,
            field: "spec.probe.periodSeconds",
            line: 3,
            message: "periodSeconds must be non-negative",
            good: "template: {}\nprobe:\n  periodSeconds: 1\n  tcpSocket: {port: 80}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  tcpSocket: {port: 65536}\n",
            severity: Error,
            field: "spec.probe.tcpSocket.port",
            line: 3,
            message: "port number 65536 must be in the range 1..65535",
            good: "template: {}\nprobe:\n  tcpSocket: {port: 65535}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  httpGet: {path: /}\n",
            severity: Error,
            field: "spec.probe.httpGet.port",
            line: 3,
            message: "port number 0 must be in the range 1..65535",
            good: "template: {}\nprobe:\n  httpGet: {path: /, port: 80}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  httpGet: {port: 80, scheme: FTP}\n",
            severity: Error,
            field: "spec.probe.httpGet.scheme",
            line: 3,
            message: "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
            good: "template: {}\nprobe:\n  httpGet: {port: 80, scheme: HTTP}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders:\n    - {name: x_probe, value: a}\n",
            severity: Error,
            field: "spec.probe.httpGet.httpHeaders[0].name",
            line: 6,
            message: "header name \"x_probe\" is not a valid header name",
            good: "template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders:\n    - {name: x-probe, value: a}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  exec: {command: []}\n",
            severity: Error,
            field: "spec.probe.exec.command",
            line: 3,
            message: "exec.command is required",
            good: "template: {}\nprobe:\n  exec: {command: [cat, /tmp/ready]}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  tcpSocket: {port: 80}\n  exec: {command: ['true']}\n",
            severity: Error,
            field: "spec.probe",
            line: 2,
            message: "only one of httpGet, tcpSocket, exec or grpc can be set",
            good: "template: {}\nprobe:\n  exec: {command: ['true']}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  periodSeconds: 5\n",
            severity: Error,
            field: "spec.probe",
            line: 2,
            message: "probe needs a health check method: one of httpGet, tcpSocket or exec",
            good: "template: {}\nprobe:\n  periodSeconds: 5\n  tcpSocket: {port: 80}\n",
        },
        Case {
            kind: K,
            bad: "template: {}\nprobe:\n  grpc: {port: 9000}\n",
            severity: Error,
            field: "spec.probe.grpc",
            line: 3,
            message: "gRPC probes are refused by Istio's validation; use httpGet, tcpSocket or exec",
            good: "template: {}\nprobe:\n  tcpSocket: {port: 9000}\n",
        },
    ]);
}

#[test]
fn proxy_config_rules() {
    const K: &str = "ProxyConfig";
    run(&[
        Case {
            kind: K,
            bad: "concurrency: -1\n",
            severity: Error,
            field: "spec.concurrency",
            line: 1,
            message: "concurrency must be greater than or equal to 0",
            good: "concurrency: 2\n",
        },
        Case {
            kind: K,
            bad: "selector:\n  matchLabels: {'': a}\n",
            severity: Error,
            field: "spec.selector.matchLabels",
            line: 2,
            message: "empty key is not supported in selector: \"=a\"",
            good: "selector:\n  matchLabels: {app: a}\n",
        },
        Case {
            kind: K,
            bad: "selector:\n  matchLabels: {'app*': a}\n",
            severity: Error,
            field: "spec.selector.matchLabels.app*",
            line: 2,
            message: "wildcard is not supported in a selector key: \"app*=a\"",
            good: "selector:\n  matchLabels: {app: a}\n",
        },
        Case {
            kind: K,
            bad: "selector:\n  matchLabels: {}\n",
            severity: Warning,
            field: "spec.selector",
            line: 1,
            message: "workload selector specified without labels",
            good: "selector:\n  matchLabels: {app: a}\n",
        },
    ]);
}

#[test]
fn envoy_filter_rules() {
    const K: &str = "EnvoyFilter";
    run(&[
        Case {
            kind: K,
            bad: "configPatches:\n- patch: {operation: ADD, value: {name: a}}\n",
            severity: Error,
            field: "spec.configPatches[0].applyTo",
            line: 2,
            message: "Envoy filter: missing applyTo",
            good: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: ADD, value: {name: a}}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTERS\n  patch: {operation: ADD, value: {name: a}}\n",
            severity: Error,
            field: "spec.configPatches[0].applyTo",
            line: 2,
            message: "invalid value \"CLUSTERS\"; expected one of INVALID, LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE, CLUSTER, EXTENSION_CONFIG, BOOTSTRAP, LISTENER_FILTER",
            good: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: ADD, value: {name: a}}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n",
            severity: Error,
            field: "spec.configPatches[0].patch",
            line: 2,
            message: "Envoy filter: missing patch",
            good: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n  patch: {value: {name: a}}\n",
            severity: Error,
            field: "spec.configPatches[0].patch.operation",
            line: 3,
            message: "Envoy filter: missing patch operation",
            good: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: MERGE, value: {name: a}}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: ADD}\n",
            severity: Error,
            field: "spec.configPatches[0].patch.value",
            line: 3,
            message: "Envoy filter: missing patch value for non-remove operation",
            good: "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: ADD, value: {name: a}}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n  match:\n    proxy: {proxyVersion: '1.(2'}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match.proxy.proxyVersion",
            line: 4,
            message: "Envoy filter: invalid regex for proxy version: unclosed group",
            good: "configPatches:\n- applyTo: CLUSTER\n  match:\n    proxy: {proxyVersion: '1\\.2.*'}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    cluster: {service: a.example.com}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match",
            line: 3,
            message: "Envoy filter: applyTo for listener class objects cannot have non listener match",
            good: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    listener: {portNumber: 80}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n  match:\n    listener: {portNumber: 80}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match",
            line: 3,
            message: "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
            good: "configPatches:\n- applyTo: CLUSTER\n  match:\n    cluster: {portNumber: 80}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: VIRTUAL_HOST\n  match:\n    cluster: {portNumber: 80}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match",
            line: 3,
            message: "Envoy filter: applyTo for http route class objects cannot have non route configuration match",
            good: "configPatches:\n- applyTo: VIRTUAL_HOST\n  match:\n    routeConfiguration: {vhost: {name: a}}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: NETWORK_FILTER\n  match:\n    listener:\n      filterChain:\n        filter:\n          name: envoy.filters.network.http_connection_manager\n          subFilter: {name: envoy.filters.http.router}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match.listener.filterChain.filter.subFilter",
            line: 8,
            message: "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
            good: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    listener:\n      filterChain:\n        filter:\n          name: envoy.filters.network.http_connection_manager\n          subFilter: {name: envoy.filters.http.router}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    listener:\n      filterChain:\n        filter: {}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match.listener.filterChain.filter.name",
            line: 6,
            message: "Envoy filter: filter match has no name to match on",
            good: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    listener:\n      filterChain:\n        filter: {name: envoy.filters.network.http_connection_manager}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    context: SIDECAR_INBOUND\n    waypoint: {}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match",
            line: 3,
            message: "only support waypointMatch when context is WAYPOINT (and a WAYPOINT context needs one)",
            good: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    context: WAYPOINT\n    waypoint: {}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    context: WAYPOINT\n    waypoint: {portNumber: 0}\n",
            severity: Error,
            field: "spec.configPatches[0].match.waypoint.portNumber",
            line: 5,
            message: "port number 0 must be in the range 1..65535",
            good: "configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    context: WAYPOINT\n    waypoint: {portNumber: 15008}\n",
        },
        Case {
            kind: K,
            bad: "configPatches:\n- applyTo: CLUSTER\n  match:\n    cluster: {name: a}\n    listener: {name: b}\n  patch: {operation: REMOVE}\n",
            severity: Error,
            field: "spec.configPatches[0].match",
            line: 3,
            message: "only one of listener, routeConfiguration, cluster or waypoint can be set",
            good: "configPatches:\n- applyTo: CLUSTER\n  match:\n    cluster: {name: a}\n  patch: {operation: REMOVE}\n",
        },
        Case {
            kind: K,
            bad: "workloadSelector:\n  labels: {app: 'web*'}\n",
            severity: Error,
            field: "spec.workloadSelector.labels.app",
            line: 2,
            message: "wildcard is not supported in selector: \"app=web*\"",
            good: "workloadSelector:\n  labels: {app: web}\n",
        },
        Case {
            kind: K,
            bad: "workloadSelector:\n  labels: {app: web}\ntargetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "only one of targetRefs or workloadSelector can be set",
            good: "targetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
        },
        Case {
            kind: K,
            bad: "workloadSelector: {}\n",
            severity: Warning,
            field: "spec.workloadSelector",
            line: 1,
            message: "Envoy filter: workload selector specified without labels, will be applied to all services in namespace",
            good: "workloadSelector:\n  labels: {app: web}\n",
        },
    ]);
}

#[test]
fn wasm_plugin_rules() {
    const K: &str = "WasmPlugin";
    run(&[
        Case {
            kind: K,
            bad: "phase: AUTHN\n",
            severity: Error,
            field: "spec.url",
            line: 0,
            message: "url field needs to be set",
            good: "phase: AUTHN\nurl: oci://registry.example/p:v1\n",
        },
        Case {
            kind: K,
            bad: "url: fake://example.com/p.wasm\n",
            severity: Error,
            field: "spec.url",
            line: 1,
            message: "url contains unsupported scheme \"fake\"; use one of http, https, file, oci",
            good: "url: https://example.com/p.wasm\n",
        },
        Case {
            kind: K,
            bad: "url: '#%zz'\n",
            severity: Error,
            field: "spec.url",
            line: 1,
            message: "invalid url \"#%zz\": invalid URI for request",
            good: "url: registry.example/p:v1\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nsha256: ABC\n",
            severity: Error,
            field: "spec.sha256",
            line: 2,
            message: "sha256 field must be 64 lower-case hex digits ([a-f0-9]{64})",
            good: "url: file:///p.wasm\nsha256: 1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nimagePullSecret: ''\n",
            severity: Error,
            field: "spec.imagePullSecret",
            line: 2,
            message: "may not be empty when set",
            good: "url: file:///p.wasm\nimagePullSecret: pull\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\npluginName: ''\n",
            severity: Error,
            field: "spec.pluginName",
            line: 2,
            message: "may not be empty when set",
            good: "url: file:///p.wasm\npluginName: p\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nphase: AUTHORIZATION\n",
            severity: Error,
            field: "spec.phase",
            line: 2,
            message: "invalid value \"AUTHORIZATION\"; expected one of UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS",
            good: "url: file:///p.wasm\nphase: AUTHZ\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: a\n  - name: a\n",
            severity: Error,
            field: "spec.vmConfig.env[1].name",
            line: 5,
            message: "duplicate env \"a\"",
            good: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: a\n  - name: b\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: ''\n",
            severity: Error,
            field: "spec.vmConfig.env[0].name",
            line: 4,
            message: "env name may not be empty",
            good: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: a\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: a\n    valueFrom: HOST\n    value: b\n",
            severity: Error,
            field: "spec.vmConfig.env[0].value",
            line: 6,
            message: "value may only be set when valueFrom is INLINE",
            good: "url: file:///p.wasm\nvmConfig:\n  env:\n  - name: a\n    valueFrom: INLINE\n    value: b\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nmatch:\n- ports:\n  - {}\n",
            severity: Error,
            field: "spec.match[0].ports[0].number",
            line: 4,
            message: "port number 0 must be in the range 1..65535",
            good: "url: file:///p.wasm\nmatch:\n- ports:\n  - {number: 80}\n",
        },
        Case {
            kind: K,
            bad: "url: file:///p.wasm\nselector:\n  matchLabels: {app: a}\ntargetRefs:\n- {kind: Service, name: a}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "only one of selector, targetRef or targetRefs can be set",
            good: "url: file:///p.wasm\ntargetRefs:\n- {kind: Service, name: a}\n",
        },
    ]);
}

#[test]
fn traffic_extension_rules() {
    const K: &str = "TrafficExtension";
    const LUA: &str = "lua:\n  inlineCode: 'function envoy_on_request(h) end'\n";
    run(&[
        Case {
            kind: K,
            bad: "phase: AUTHN\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "exactly one of wasm or lua must be set",
            good: "phase: AUTHN\nlua:\n  inlineCode: 'function envoy_on_request(h) end'\n",
        },
        Case {
            kind: K,
            bad: "wasm: {url: 'oci://r.example/f:v2'}\nlua: {inlineCode: 'x = 1'}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "exactly one of wasm or lua must be set",
            good: "wasm: {url: 'oci://r.example/f:v2'}\n",
        },
        Case {
            kind: K,
            bad: "lua: {}\n",
            severity: Error,
            field: "spec.lua.inlineCode",
            line: 1,
            message: "lua.inlineCode cannot be empty",
            good: "lua: {inlineCode: 'x = 1'}\n",
        },
        Case {
            kind: K,
            bad: "wasm:\n  sha256: ''\n",
            severity: Error,
            field: "spec.wasm.url",
            line: 1,
            message: "url field needs to be set",
            good: "wasm:\n  url: r.example/f:v2\n",
        },
        Case {
            kind: K,
            bad: "wasm:\n  url: ftp://r.example/f.wasm\n",
            severity: Error,
            field: "spec.wasm.url",
            line: 2,
            message: "url contains unsupported scheme \"ftp\"; use one of http, https, file, oci",
            good: "wasm:\n  url: http://r.example/f.wasm\n",
        },
        Case {
            kind: K,
            bad: "wasm:\n  url: file:///f.wasm\n  sha256: 12ab\n",
            severity: Error,
            field: "spec.wasm.sha256",
            line: 3,
            message: "sha256 field must be 64 lower-case hex digits ([a-f0-9]{64})",
            good: "wasm:\n  url: file:///f.wasm\n  sha256: ''\n",
        },
        Case {
            kind: K,
            bad: "wasm:\n  url: file:///f.wasm\n  imagePullPolicy: Never\n",
            severity: Error,
            field: "spec.wasm.imagePullPolicy",
            line: 3,
            message: "invalid value \"Never\"; expected one of UNSPECIFIED_POLICY, IfNotPresent, Always",
            good: "wasm:\n  url: file:///f.wasm\n  imagePullPolicy: IfNotPresent\n",
        },
        Case {
            kind: K,
            bad: "wasm:\n  url: file:///f.wasm\n  vmConfig:\n    env:\n    - {name: E, valueFrom: HOST, value: v}\n",
            severity: Error,
            field: "spec.wasm.vmConfig.env[0].value",
            line: 5,
            message: "value may only be set when valueFrom is INLINE",
            good: "wasm:\n  url: file:///f.wasm\n  vmConfig:\n    env:\n    - {name: E, value: v}\n",
        },
        Case {
            kind: K,
            bad: "phase: UNSPECIFIED_PHASE\nlua: {inlineCode: 'x = 1'}\n",
            severity: Error,
            field: "spec.phase",
            line: 1,
            message: "invalid value \"UNSPECIFIED_PHASE\"; expected one of UNSPECIFIED, AUTHN, AUTHZ, STATS",
            good: "phase: UNSPECIFIED\nlua: {inlineCode: 'x = 1'}\n",
        },
        Case {
            kind: K,
            bad: "priority: 3000000000\nlua: {inlineCode: 'x = 1'}\n",
            severity: Error,
            field: "spec.priority",
            line: 1,
            message: "3000000000 does not fit a 32-bit integer",
            good: "priority: -2000000000\nlua: {inlineCode: 'x = 1'}\n",
        },
        Case {
            kind: K,
            bad: "lua: {inlineCode: 'x = 1'}\nmatch:\n- mode: SERVER\n  ports: [{number: 70000}]\n",
            severity: Error,
            field: "spec.match[0].ports[0].number",
            line: 4,
            message: "port number 70000 must be in the range 1..65535",
            good: "lua: {inlineCode: 'x = 1'}\nmatch:\n- mode: SERVER\n  ports: [{number: 7000}]\n",
        },
        Case {
            kind: K,
            bad: "lua: {inlineCode: 'x = 1'}\nselector:\n  matchLabels: {app: a}\ntargetRefs:\n- {kind: Service, name: a}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "only one of selector, targetRef or targetRefs can be set",
            good: "lua: {inlineCode: 'x = 1'}\ntargetRefs:\n- {kind: Service, name: a}\n",
        },
        Case {
            kind: K,
            bad: "lua: {inlineCode: 'x = 1'}\ntargetRefs:\n- {kind: Deployment, group: apps, name: a}\n",
            severity: Error,
            field: "spec.targetRefs[0].kind",
            line: 3,
            message: "targetRef must be to one of core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass but was apps/Deployment",
            good: "lua: {inlineCode: 'x = 1'}\ntargetRefs:\n- {kind: ServiceEntry, group: networking.istio.io, name: a}\n",
        },
        Case {
            kind: K,
            bad: "lua: {inlineCode: 'x = 1'}\nselector:\n  matchLabels: {app: '*'}\n",
            severity: Error,
            field: "spec.selector.matchLabels.app",
            line: 3,
            message: "wildcard is not supported in a selector value: \"app=*\"",
            good: "lua: {inlineCode: 'x = 1'}\nselector:\n  matchLabels: {app: shop}\n",
        },
    ]);
    // Only WasmPlugin has the singular `targetRef`.
    let out = decode(&doc(
        K,
        &format!("{LUA}targetRef: {{kind: Service, name: a}}\n"),
    ));
    assert!(
        out.diagnostics
            .iter()
            .any(|d| d.is_error() && d.field == "spec.targetRef"),
        "{}",
        render(&out.diagnostics)
    );
    // A script over 64 KiB is refused; one at the limit is not.
    let big = |n: usize| format!("lua:\n  inlineCode: {}\n", "x".repeat(n));
    let out = decode(&doc(K, &big(65537)));
    assert!(
        out.diagnostics
            .iter()
            .any(|d| d.is_error() && d.field == "spec.lua.inlineCode"),
        "{}",
        render(&out.diagnostics)
    );
    accepted(&doc(K, &big(65536)));
}

#[test]
fn a_valid_telemetry_becomes_a_resource_that_travels_as_json() {
    let text = doc(
        "Telemetry",
        "selector:\n  matchLabels: {app: web}\naccessLogging:\n- providers: [{name: envoy}]\n",
    );
    accepted(&text);
    let out = decode(&text);
    let [res] = out.resources.as_slice() else {
        panic!("expected one resource: {:?}", out.resources)
    };
    assert_eq!(
        (res.kind, res.api_version, res.key().as_str()),
        (Kind::Telemetry, "telemetry.istio.io/v1", "ns/t")
    );
    let Spec::Telemetry(t) = &res.spec else {
        panic!("{:?}", res.spec)
    };
    let labels = t.selector.as_ref().map(|s| &s.match_labels);
    assert_eq!(
        labels.and_then(|l| l.get("app")).map(String::as_str),
        Some("web")
    );
    // The selector's line, for analyzer messages.
    assert_eq!(
        res.origin.line_of("spec.selector.matchLabels.app"),
        HEADER_LINES + 2
    );
    // Checked while decoding; served to proxies as the spec it was written as.
    assert!(sluice_api::validate(res).is_empty());
    let json = res.spec_json().expect("served");
    assert_eq!(json["selector"]["matchLabels"]["app"], "web");
    assert_eq!(json["accessLogging"][0]["providers"][0]["name"], "envoy");
    // Counted once: as a resource, not also as a document sluice does not enforce.
    assert_eq!(out.unenforced, 0);
    // An invalid one is refused and does not become a resource; other kinds never do.
    let bad = decode(&doc("Telemetry", "selector:\n  matchLabels: {app: '*'}\n"));
    assert!(bad.has_errors() && bad.resources.is_empty());
    let other = decode(&doc("WasmPlugin", "url: oci://r.example/p:v1\n"));
    assert!(other.resources.is_empty());
    assert_eq!(other.unenforced, 1);
}
