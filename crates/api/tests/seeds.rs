//! Every YAML block of the seed documents (the user's specification) decodes and validates, with
//! the values the seeds rely on.

mod common;

use std::time::Duration;

use common::{fixture, render};
use sluice_api::kube::IntOrString;
use sluice_api::{decode_file, load_paths, validate, Kind, LoadResult, Resource, Severity, Spec};

/// Every fixture, in order; a new or missing file fails `fixtures_are_all_listed`.
const FIXTURES: [&str; 23] = [
    "000-1-serviceentry-httpbin-ext.yaml",
    "000-2-serviceentry-virtualservice-google.yaml",
    "000-3-virtualservice-httpbin-ext-timeout.yaml",
    "001-1-serviceentry-httpbin-ext.yaml",
    "001-2-serviceentry-google.yaml",
    "001-3-virtualservice-httpbin-ext-timeout.yaml",
    "001-4-configmap-istio.yaml",
    "002-1-serviceentry-external-api.yaml",
    "002-2-gateway-myapp-egressgateway.yaml",
    "002-3-virtualservice-external-api-route.yaml",
    "002-4-serviceentry-httpbin.yaml",
    "002-5-virtualservice-httpbin-timeout.yaml",
    "002-6-virtualservice-httpbin-egressgateway.yaml",
    "003-1-gateway-httpbin-gateway.yaml",
    "003-2-virtualservice-httpbin.yaml",
    "003-3-ingress-simple-ingress.yaml",
    "003-4-secret-istio-ingress-certs.yaml",
    "003-5-ingress-secure-ingress.yaml",
    "004-1-destinationrule-recommendation.yaml",
    "004-2-virtualservice-recommendation.yaml",
    "004-3-serviceentry-worldclockapi-port81.yaml",
    "004-4-virtualservice-worldclockapi-timeout.yaml",
    "004-5-serviceentry-worldclockapi-port80.yaml",
];

/// Decodes one seed fixture: no errors, and validation accepts every resource.
fn load(name: &str) -> (Vec<Resource>, LoadResult) {
    let out = decode_file(&fixture(&format!("seeds/{name}")));
    let mut diags = out.diagnostics.clone();
    for r in &out.resources {
        diags.extend(validate(r));
    }
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).cloned().collect();
    assert!(errors.is_empty(), "{name}: errors:\n{}", render(&errors));
    (out.resources.clone(), out)
}

/// The single resource of a fixture, with no warnings at all.
fn load_clean(name: &str) -> Resource {
    let (resources, out) = load(name);
    let mut diags = out.diagnostics;
    for r in &resources {
        diags.extend(validate(r));
    }
    assert!(
        diags.is_empty(),
        "{name}: unexpected diagnostics:\n{}",
        render(&diags)
    );
    assert_eq!(resources.len(), 1, "{name}");
    resources.into_iter().next().expect("one resource")
}

/// An Ingress backend as `IngressBackend::service` reads it.
type Backend<'a> = Option<(&'a str, Option<IntOrString>)>;

fn names(resources: &[Resource]) -> Vec<(Kind, String)> {
    resources.iter().map(|r| (r.kind, r.key())).collect()
}

#[test]
fn fixtures_are_all_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture("seeds"))
        .expect("fixtures dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, FIXTURES.to_vec());
}

#[test]
fn all_seeds_load_through_load_paths() {
    let out = load_paths(&[fixture("seeds")]);
    assert!(!out.has_errors(), "{}", render(&out.diagnostics));
    // 23 files, one of which holds two documents.
    assert_eq!(out.resources.len(), 24);
    // Sorted by path: the first file's resource comes first.
    assert_eq!(out.resources[0].key(), "default/httpbin-ext");
    assert!(out.resources[0]
        .origin
        .file
        .ends_with("000-1-serviceentry-httpbin-ext.yaml"));
}

#[test]
fn seed_000_external_http_service() {
    let r = load_clean("000-1-serviceentry-httpbin-ext.yaml");
    assert_eq!(
        (r.kind, r.key()),
        (Kind::ServiceEntry, "default/httpbin-ext".to_string())
    );
    assert_eq!(r.api_version, "networking.istio.io/v1alpha3");
    let Spec::ServiceEntry(se) = &r.spec else {
        panic!("not a ServiceEntry")
    };
    assert_eq!(se.hosts, ["httpbin.org"]);
    assert_eq!(se.ports.len(), 1);
    assert_eq!(
        (se.ports[0].number, se.ports[0].name.as_str()),
        (80, "http")
    );
    assert_eq!(se.ports[0].protocol.as_deref(), Some("HTTP"));
    assert_eq!(se.resolution.as_deref(), Some("DNS"));
    assert_eq!(se.location.as_deref(), Some("MESH_EXTERNAL"));
}

#[test]
fn seed_000_https_service_with_sni_hosts() {
    let (resources, out) = load("000-2-serviceentry-virtualservice-google.yaml");
    assert!(out.diagnostics.is_empty(), "{}", render(&out.diagnostics));
    assert_eq!(
        names(&resources),
        [
            (Kind::ServiceEntry, "default/google".to_string()),
            (Kind::VirtualService, "default/google".to_string())
        ]
    );
    let Spec::ServiceEntry(se) = &resources[0].spec else {
        panic!()
    };
    assert_eq!(se.ports[0].number, 443);
    assert_eq!(se.ports[0].protocol.as_deref(), Some("HTTPS"));
    let vs = &resources[1];
    let Spec::VirtualService(spec) = &vs.spec else {
        panic!()
    };
    assert_eq!(spec.hosts, ["www.google.com"]);
    let m = &spec.tls[0].matches[0];
    assert_eq!(m.sni_hosts, ["www.google.com"]);
    assert_eq!(m.port, 443);
    let route = &spec.tls[0].route[0];
    assert_eq!(route.destination.host, "www.google.com");
    assert_eq!(route.destination.port.as_ref().map(|p| p.number), Some(443));
    assert_eq!(route.weight, Some(100));
    // Second document: its lines are lines of the file, not of the document.
    assert_eq!(vs.origin.line, 16);
    assert_eq!(vs.origin.line_of("spec.tls[0].match[0].sni_hosts"), 26);
    assert_eq!(vs.origin.line_of("spec.tls[0].match[0].sniHosts"), 26);
}

fn assert_timeout_vs(name: &str, host: &str, timeout: Duration) {
    let r = load_clean(name);
    let Spec::VirtualService(vs) = &r.spec else {
        panic!("{name}: not a VirtualService")
    };
    assert_eq!(vs.hosts, [host], "{name}");
    assert_eq!(vs.http[0].timeout.map(|t| t.0), Some(timeout), "{name}");
    assert_eq!(vs.http[0].route[0].destination.host, host, "{name}");
    assert_eq!(vs.http[0].route[0].weight, Some(100), "{name}");
}

#[test]
fn seed_000_and_001_timeout_3s() {
    assert_timeout_vs(
        "000-3-virtualservice-httpbin-ext-timeout.yaml",
        "httpbin.org",
        Duration::from_secs(3),
    );
    assert_timeout_vs(
        "001-3-virtualservice-httpbin-ext-timeout.yaml",
        "httpbin.org",
        Duration::from_secs(3),
    );
}

#[test]
fn seed_001_service_entries() {
    let r = load_clean("001-1-serviceentry-httpbin-ext.yaml");
    assert_eq!(r.key(), "default/httpbin-ext");
    let r = load_clean("001-2-serviceentry-google.yaml");
    let Spec::ServiceEntry(se) = &r.spec else {
        panic!()
    };
    assert_eq!(se.hosts, ["www.google.com"]);
    assert_eq!(se.ports[0].name, "https");
}

#[test]
fn seed_001_mesh_configmap_and_the_sed_edit() {
    let r = load_clean("001-4-configmap-istio.yaml");
    assert_eq!(
        (r.kind, r.key()),
        (Kind::ConfigMap, "istio-system/istio".to_string())
    );
    let Spec::ConfigMap { data, mesh } = &r.spec else {
        panic!()
    };
    assert!(data.contains_key("meshNetworks"));
    let mesh = mesh.as_ref().expect("mesh config decoded");
    let mode = |m: &sluice_api::mesh::MeshConfig| {
        m.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.clone())
    };
    assert_eq!(mode(mesh).as_deref(), Some("ALLOW_ANY"));
    assert_eq!(mesh.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(mesh.access_log_encoding.as_deref(), Some("TEXT"));

    // `kubectl get … | sed 's/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g' | kubectl replace -f -`
    let text = std::fs::read_to_string(fixture("seeds/001-4-configmap-istio.yaml")).expect("read");
    let edited = text.replace("mode: ALLOW_ANY", "mode: REGISTRY_ONLY");
    let r = common::decode_one(&edited);
    let Spec::ConfigMap {
        mesh: Some(mesh), ..
    } = &r.spec
    else {
        panic!()
    };
    assert_eq!(mode(mesh).as_deref(), Some("REGISTRY_ONLY"));
}

#[test]
fn seed_002_service_entries_export_to_dot_and_two_ports() {
    for name in [
        "002-1-serviceentry-external-api.yaml",
        "002-4-serviceentry-httpbin.yaml",
    ] {
        let r = load_clean(name);
        assert_eq!(r.api_version, "networking.istio.io/v1beta1");
        let Spec::ServiceEntry(se) = &r.spec else {
            panic!()
        };
        assert_eq!(se.export_to, ["."], "{name}");
        let ports: Vec<(u32, &str, Option<&str>)> = se
            .ports
            .iter()
            .map(|p| (p.number, p.name.as_str(), p.protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [
                (80, "http-port", Some("HTTP")),
                (443, "https-port", Some("HTTPS"))
            ],
            "{name}"
        );
        assert_eq!(se.resolution.as_deref(), Some("DNS"));
    }
}

#[test]
fn seed_002_egress_gateway() {
    let r = load_clean("002-2-gateway-myapp-egressgateway.yaml");
    let Spec::Gateway(gw) = &r.spec else { panic!() };
    assert_eq!(
        gw.selector.get("istio").map(String::as_str),
        Some("egressgateway")
    );
    assert_eq!(
        gw.selector.get("app").map(String::as_str),
        Some("istio-egressgateway")
    );
    assert_eq!(gw.servers[0].hosts, ["external-api.example.com"]);
    assert_eq!(gw.servers[0].port.number, 80);
    assert_eq!(gw.servers[0].port.protocol.as_deref(), Some("HTTP"));
}

#[test]
fn seed_002_timeout_half_a_second() {
    let r = load_clean("002-5-virtualservice-httpbin-timeout.yaml");
    let Spec::VirtualService(vs) = &r.spec else {
        panic!()
    };
    assert_eq!(
        vs.http[0].timeout.map(|t| t.0),
        Some(Duration::from_millis(500))
    );
    assert_eq!(vs.export_to, ["."]);
}

#[test]
fn seed_002_routes_to_the_egress_gateway() {
    for name in [
        "002-3-virtualservice-external-api-route.yaml",
        "002-6-virtualservice-httpbin-egressgateway.yaml",
    ] {
        let r = load_clean(name);
        let Spec::VirtualService(vs) = &r.spec else {
            panic!()
        };
        assert_eq!(vs.gateways, ["mesh"], "{name}");
        let m = &vs.http[0].matches[0];
        assert_eq!(
            (m.gateways.as_slice(), m.port),
            (&["mesh".to_string()][..], 80)
        );
        let d = &vs.http[0].route[0].destination;
        assert_eq!(d.host, "istio-egressgateway.istio-system.svc.cluster.local");
        assert_eq!(d.port.as_ref().map(|p| p.number), Some(80));
    }
}

#[test]
fn seed_003_pre_1_0_gateway_is_accepted_with_warnings() {
    let (resources, out) = load("003-1-gateway-httpbin-gateway.yaml");
    let Spec::Gateway(gw) = &resources[0].spec else {
        panic!()
    };
    assert!(gw.selector.is_empty());
    assert_eq!(gw.servers.len(), 2);
    assert_eq!(gw.servers[0].hosts, ["*"]);
    assert_eq!(gw.servers[1].hosts, ["*"]);
    assert_eq!(gw.servers[0].port.protocol.as_deref(), Some("HTTP"));
    assert_eq!(gw.servers[1].port.protocol.as_deref(), Some("HTTPS"));
    let tls = gw.servers[1].tls.as_ref().expect("tls");
    assert_eq!(tls.mode.as_deref(), Some("SIMPLE"));
    assert_eq!(tls.server_certificate.as_deref(), Some("/tmp/tls.crt"));
    assert_eq!(tls.private_key.as_deref(), Some("/tmp/tls.key"));
    let warnings: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
    let file = fixture("seeds/003-1-gateway-httpbin-gateway.yaml")
        .display()
        .to_string();
    assert_eq!(
        warnings,
        [
            format!("{file}:10: Gateway default/httpbin-gateway: spec.servers[0].hosts: warning: server has no hosts; treated as [\"*\"] as before Istio 1.0 (hosts are required now)"),
            format!("{file}:10: Gateway default/httpbin-gateway: spec.servers[0].port: warning: port.protocol is missing; inferred HTTP from the port name \"http\""),
            format!("{file}:13: Gateway default/httpbin-gateway: spec.servers[1].hosts: warning: server has no hosts; treated as [\"*\"] as before Istio 1.0 (hosts are required now)"),
            format!("{file}:13: Gateway default/httpbin-gateway: spec.servers[1].port: warning: port.protocol is missing; inferred HTTPS from the port name \"https\""),
        ]
    );
}

#[test]
fn seed_003_pre_0_8_virtual_service_is_accepted_with_warnings() {
    let (resources, out) = load("003-2-virtualservice-httpbin.yaml");
    let Spec::VirtualService(vs) = &resources[0].spec else {
        panic!()
    };
    assert_eq!(vs.gateways, ["httpbin-gateway"]);
    let prefixes: Vec<Option<&str>> = vs
        .http
        .iter()
        .map(|h| h.matches[0].uri.as_ref().and_then(|u| u.prefix.as_deref()))
        .collect();
    assert_eq!(prefixes, [Some("/status"), Some("/delay")]);
    for h in &vs.http {
        let d = &h.route[0].destination;
        assert_eq!(d.host_name(), "httpbin");
        assert_eq!(d.host, "httpbin");
        assert_eq!(d.port.as_ref().map(|p| p.number), Some(8000));
    }
    let got: Vec<(u32, &str, &str)> = out
        .diagnostics
        .iter()
        .map(|d| (d.line, d.field.as_str(), d.message.as_str()))
        .collect();
    let single = "`match` should be a list of conditions; this single condition was read as a one-element list";
    let name = "destination.name is deprecated; use destination.host";
    assert_eq!(
        got,
        [
            (13, "spec.http[0].match", single),
            (21, "spec.http[1].match", single),
            (20, "spec.http[0].route[0].destination.name", name),
            (28, "spec.http[1].route[0].destination.name", name),
        ]
    );
    assert!(out
        .diagnostics
        .iter()
        .all(|d| d.severity == Severity::Warning));
    // The rewritten match keeps pointing at the user's lines.
    assert_eq!(
        resources[0]
            .origin
            .line_of("spec.http[1].match[0].uri.prefix"),
        23
    );
}

#[test]
fn seed_003_ingresses() {
    for (name, key, tls) in [
        (
            "003-3-ingress-simple-ingress.yaml",
            "default/simple-ingress",
            false,
        ),
        (
            "003-5-ingress-secure-ingress.yaml",
            "default/secure-ingress",
            true,
        ),
    ] {
        let r = load_clean(name);
        assert_eq!(
            (r.kind, r.key().as_str(), r.api_version),
            (Kind::Ingress, key, "extensions/v1beta1")
        );
        assert_eq!(
            r.meta
                .annotations
                .get("kubernetes.io/ingress.class")
                .map(String::as_str),
            Some("istio")
        );
        let Spec::Ingress(ing) = &r.spec else {
            panic!()
        };
        let paths: Vec<(Option<&str>, Backend<'_>)> = ing.rules[0]
            .http
            .as_ref()
            .expect("http")
            .paths
            .iter()
            .map(|p| (p.path.as_deref(), p.backend.service()))
            .collect();
        assert_eq!(
            paths,
            [
                (
                    Some("/status/*"),
                    Some(("httpbin", Some(IntOrString::Int(8000))))
                ),
                (
                    Some("/delay/*"),
                    Some(("httpbin", Some(IntOrString::Int(8000))))
                ),
            ]
        );
        assert_eq!(
            ing.tls.first().and_then(|t| t.secret_name.as_deref()),
            tls.then_some("istio-ingress-certs")
        );
    }
}

#[test]
fn seed_003_tls_secret() {
    let r = load_clean("003-4-secret-istio-ingress-certs.yaml");
    assert_eq!(r.key(), "istio-system/istio-ingress-certs");
    let Spec::Secret { secret_type, data } = &r.spec else {
        panic!()
    };
    assert_eq!(secret_type.as_deref(), Some("kubernetes.io/tls"));
    let crt = String::from_utf8(data["tls.crt"].clone()).expect("utf8");
    assert!(crt.starts_with("-----BEGIN CERTIFICATE-----\n"), "{crt}");
    assert!(data["tls.key"].starts_with(b"-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn seed_004_subset_routing() {
    let r = load_clean("004-1-destinationrule-recommendation.yaml");
    let Spec::DestinationRule(dr) = &r.spec else {
        panic!()
    };
    assert_eq!(dr.host, "recommendation");
    assert_eq!(dr.subsets[0].name, "version-v3");
    assert_eq!(
        dr.subsets[0].labels.get("version").map(String::as_str),
        Some("v3")
    );

    let r = load_clean("004-2-virtualservice-recommendation.yaml");
    let Spec::VirtualService(vs) = &r.spec else {
        panic!()
    };
    let d = &vs.http[0].route[0];
    assert_eq!(d.destination.host, "recommendation");
    assert_eq!(d.destination.subset.as_deref(), Some("version-v3"));
    assert_eq!(d.weight, Some(100));
}

#[test]
fn seed_004_worldclockapi_port_81_then_80_with_lower_case_protocol() {
    for (name, port) in [
        ("004-3-serviceentry-worldclockapi-port81.yaml", 81),
        ("004-5-serviceentry-worldclockapi-port80.yaml", 80),
    ] {
        let r = load_clean(name);
        assert_eq!(r.key(), "default/worldclockapi-egress-rule");
        let Spec::ServiceEntry(se) = &r.spec else {
            panic!()
        };
        assert_eq!(se.hosts, ["worldclockapi.com"]);
        assert_eq!(se.ports[0].number, port, "{name}");
        assert_eq!(se.ports[0].name, "http-80");
        assert_eq!(se.ports[0].protocol.as_deref(), Some("http"));
        assert_eq!(se.resolution, None, "resolution defaults to NONE");
    }
    assert_timeout_vs(
        "004-4-virtualservice-worldclockapi-timeout.yaml",
        "worldclockapi.com",
        Duration::from_secs(3),
    );
}
