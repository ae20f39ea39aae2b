//! `sluice analyze`'s whole-config analyzers: for each code, one config that triggers it and one
//! that does not, plus seed 004 and the istioctl line format.

mod common;

use std::path::Path;

use common::{resources, resources_from_files};
use sluice_model::analyze::{analyze, from_diagnostic, Level, Message};

fn run(yaml: &str) -> Vec<Message> {
    analyze(&resources(yaml))
}

fn with_code<'a>(msgs: &'a [Message], code: &str) -> Vec<&'a Message> {
    msgs.iter().filter(|m| m.code == code).collect()
}

/// Asserts `yaml` yields exactly one `code` message containing `text`, and returns it.
fn one(yaml: &str, code: &str, text: &str) -> Message {
    let msgs = run(yaml);
    let hits = with_code(&msgs, code);
    assert_eq!(hits.len(), 1, "{code}: {msgs:#?}");
    assert!(hits[0].text.contains(text), "{}", hits[0].text);
    hits[0].clone()
}

fn none(yaml: &str, code: &str) {
    let msgs = run(yaml);
    assert!(with_code(&msgs, code).is_empty(), "{code}: {msgs:#?}");
}

const SE_HTTPBIN: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
";

fn vs_to(dest: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [httpbin.org]
  http:
  - route:
    - destination: {dest}
"
    )
}

#[test]
fn ist0101_unknown_destination_host() {
    let m = one(
        &vs_to("{host: nothere.example.com}"),
        "IST0101",
        r#"Referenced host not found: "nothere.example.com""#,
    );
    assert_eq!(m.level, Level::Error);
    assert_eq!(m.origin.as_deref(), Some("VirtualService default/vs"));
    assert_eq!(m.line, 9);
    none(
        &format!(
            "{SE_HTTPBIN}---{}",
            vs_to("{host: httpbin.org, port: {number: 80}}")
        ),
        "IST0101",
    );
}

#[test]
fn ist0101_mirror_host_port_and_subset() {
    let yaml = format!(
        "{SE_HTTPBIN}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [httpbin.org]
  http:
  - route:
    - destination: {{host: httpbin.org, port: {{number: 8080}}, subset: v9}}
    mirror: {{host: shadow.example.com}}
"
    );
    let msgs = run(&yaml);
    let texts: Vec<&str> = with_code(&msgs, "IST0101")
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert!(
        texts.contains(&r#"Referenced mirror host not found: "shadow.example.com""#),
        "{texts:?}"
    );
    assert!(
        texts.contains(&r#"Referenced host:port not found: "httpbin.org:8080""#),
        "{texts:?}"
    );
    assert!(
        texts.contains(&r#"Referenced host+subset in destinationrule not found: "httpbin.org+v9""#),
        "{texts:?}"
    );
    let fixed = format!(
        "{SE_HTTPBIN}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: httpbin.org
  subsets:
  - name: v9
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [httpbin.org]
  http:
  - route:
    - destination: {{host: httpbin.org, port: {{number: 80}}, subset: v9}}
    mirror: {{host: httpbin.org, port: {{number: 443}}}}
"
    );
    none(&fixed, "IST0101");
}

const GATEWAY: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*.example.com\"]
";

fn gw_vs(gateway: &str, host: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [\"{host}\"]
  gateways: [{gateway}]
  http:
  - route:
    - destination: {{host: httpbin.org, port: {{number: 80}}}}
"
    )
}

#[test]
fn ist0101_unknown_gateway() {
    one(
        &format!(
            "{SE_HTTPBIN}---{GATEWAY}---{}",
            gw_vs("istio-system/nope", "a.example.com")
        ),
        "IST0101",
        r#"Referenced gateway not found: "istio-system/nope""#,
    );
    none(
        &format!(
            "{SE_HTTPBIN}---{GATEWAY}---{}",
            gw_vs("istio-system/gw", "a.example.com")
        ),
        "IST0101",
    );
}

#[test]
fn ist0132_host_not_in_gateway() {
    one(
        &format!("{SE_HTTPBIN}---{GATEWAY}---{}", gw_vs("istio-system/gw", "other.org")),
        "IST0132",
        "one or more host [other.org] defined in VirtualService default/vs not found in Gateway istio-system/gw.",
    );
    none(
        &format!(
            "{SE_HTTPBIN}---{GATEWAY}---{}",
            gw_vs("istio-system/gw", "a.example.com")
        ),
        "IST0132",
    );
}

fn tls_gateway(secret: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tls-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, credentialName: {secret}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: good-cert, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
  tls.key: a2V5
---
apiVersion: v1
kind: Secret
metadata: {{name: bad-cert, namespace: istio-system}}
data:
  other: eA==
"
    )
}

#[test]
fn ist0101_credential_name_and_ist0161() {
    one(
        &tls_gateway("missing-cert"),
        "IST0101",
        r#"Referenced credentialName not found: "missing-cert""#,
    );
    one(
        &tls_gateway("bad-cert"),
        "IST0161",
        "The credential referenced by the Gateway tls-gw in namespace default is invalid",
    );
    none(&tls_gateway("good-cert"), "IST0101");
    none(&tls_gateway("good-cert"), "IST0161");
}

#[test]
fn ist0109_two_mesh_virtual_services_for_one_host() {
    let two = format!(
        "{SE_HTTPBIN}---{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs2}}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route:
    - destination: {{host: httpbin.org, port: {{number: 80}}}}
",
        vs_to("{host: httpbin.org, port: {number: 80}}")
    );
    let msgs = run(&two);
    let hits = with_code(&msgs, "IST0109");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        "The VirtualServices default/vs,default/vs2 associated with mesh gateway define the same host httpbin.org which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
    );
    none(
        &format!(
            "{SE_HTTPBIN}---{}",
            vs_to("{host: httpbin.org, port: {number: 80}}")
        ),
        "IST0109",
    );
}

#[test]
fn ist0112_multi_port_destination_at_a_gateway() {
    let yaml = format!(
        "{SE_HTTPBIN}---{GATEWAY}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {{host: httpbin.org}}
"
    );
    one(
        &yaml,
        "IST0112",
        r#"This VirtualService routes to a service "httpbin.org" that exposes multiple ports [80 443]. Specifying a port in the destination is required to disambiguate."#,
    );
    // In a sidecar the port the client called picks the cluster.
    none(
        &format!("{SE_HTTPBIN}---{}", vs_to("{host: httpbin.org}")),
        "IST0112",
    );
}

fn dr_tls(tls: &str) -> String {
    format!(
        "{SE_HTTPBIN}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: httpbin.org
  trafficPolicy:
    tls: {tls}
    portLevelSettings:
    - port: {{number: 443}}
      tls: {tls}
"
    )
}

#[test]
fn ist0128_and_ist0129_tls_without_ca() {
    one(
        &dr_tls("{mode: SIMPLE}"),
        "IST0128",
        "DestinationRule dr in namespace default has TLS mode set to SIMPLE but no caCertificates are set to validate server identity for host: httpbin.org",
    );
    one(
        &dr_tls("{mode: SIMPLE}"),
        "IST0129",
        "for host: httpbin.org at port 443",
    );
    none(
        &dr_tls("{mode: SIMPLE, caCertificates: /etc/ca.pem}"),
        "IST0128",
    );
    none(
        &dr_tls("{mode: SIMPLE, caCertificates: /etc/ca.pem}"),
        "IST0129",
    );
}

fn vs_rules(rules: &str) -> String {
    format!(
        "{SE_HTTPBIN}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [httpbin.org]
  http:
{rules}"
    )
}

const ROUTE: &str = "    route:\n    - destination: {host: httpbin.org, port: {number: 80}}\n";

#[test]
fn ist0130_unreachable_rules() {
    let yaml = vs_rules(&format!(
        "  - name: first\n{ROUTE}  - name: second\n{ROUTE}"
    ));
    one(
        &yaml,
        "IST0130",
        r#"VirtualService rule "second" not used (only the last rule can have no matches)."#,
    );
    let dup = vs_rules(&format!(
        "  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}"
    ));
    one(
        &dup,
        "IST0130",
        "VirtualService rule #1 not used (all matches used by prior rules).",
    );
    let after = vs_rules(&format!(
        "  -\n{ROUTE}  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}"
    ));
    one(&after, "IST0130", "route without matches defined before");
    let ok = vs_rules(&format!(
        "  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /b}}}}]\n{ROUTE}  -\n{ROUTE}"
    ));
    none(&ok, "IST0130");
}

#[test]
fn ist0131_ineffective_matches() {
    let dup = vs_rules(&format!(
        "  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /a}}}}, {{uri: {{prefix: /b}}}}]\n{ROUTE}"
    ));
    let m = one(
        &dup,
        "IST0131",
        "VirtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0).",
    );
    assert_eq!(m.level, Level::Info);
    let covered = vs_rules(&format!(
        "  - match: [{{uri: {{prefix: /api}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /api/v2}}}}]\n{ROUTE}"
    ));
    one(
        &covered,
        "IST0131",
        "VirtualService rule #1 match #0 of prefix /api/v2 is not used (duplicate/overlapping match in rule #0 of prefix /api on #0).",
    );
    let ok = vs_rules(&format!(
        "  - match: [{{uri: {{prefix: /api/v2}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /api}}}}]\n{ROUTE}"
    ));
    none(&ok, "IST0131");
}

fn se(name: &str, host: &str, port: &str, extra: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports:
  - {port}
  resolution: DNS
{extra}"
    )
}

#[test]
fn ist0134_tcp_service_entry_without_addresses() {
    one(
        &se(
            "db",
            "db.example.com",
            "{number: 5432, name: tcp, protocol: TCP}",
            "",
        ),
        "IST0134",
        "ServiceEntry addresses are required for this protocol.",
    );
    none(
        &se(
            "db",
            "db.example.com",
            "{number: 5432, name: tcp, protocol: TCP}",
            "  addresses: [10.1.2.3]\n",
        ),
        "IST0134",
    );
    none(
        &se(
            "web",
            "web.example.com",
            "{number: 80, name: http, protocol: HTTP}",
            "",
        ),
        "IST0134",
    );
}

#[test]
fn ist0177_conflicting_service_entry_protocols() {
    let yaml = format!(
        "{}---{}",
        se(
            "api-http",
            "api.example.com",
            "{number: 443, name: http, protocol: HTTP}",
            ""
        ),
        se(
            "api-tls",
            "api.example.com",
            "{number: 443, name: tls, protocol: TLS}",
            ""
        )
    );
    let msgs = run(&yaml);
    let hits = with_code(&msgs, "IST0177");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        r#"Multiple ServiceEntries (default/api-http, default/api-tls) define the same host "api.example.com" and port 443 with conflicting protocols (HTTP, TLS)."#
    );
    let exported_apart = format!(
        "{}---{}",
        se(
            "api-http",
            "api.example.com",
            "{number: 443, name: http, protocol: HTTP}",
            "  exportTo: [.]\n"
        ),
        se(
            "api-tls",
            "api.example.com",
            "{number: 443, name: tls, protocol: TLS}",
            "  exportTo: [other]\n"
        )
    );
    none(&exported_apart, "IST0177");
}

fn two_gateways(host_b: &str) -> String {
    format!(
        "{GATEWAY}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw2, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"{host_b}\"]
"
    )
}

#[test]
fn ist0145_conflicting_gateways() {
    let msgs = run(&two_gateways("a.example.com"));
    let hits = with_code(&msgs, "IST0145");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert!(hits
        .iter()
        .any(|m| m.text
            == "Conflict with gateways istio-system/gw2 (workload selector istio=ingressgateway, port 80, hosts *.example.com)."));
    none(&two_gateways("a.example.org"), "IST0145");
}

fn gateway_service(target: u32) -> String {
    format!(
        "{GATEWAY}---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway, app: istio-ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: {target}}}
"
    )
}

#[test]
fn ist0162_gateway_port_not_on_service() {
    one(
        &gateway_service(8080),
        "IST0162",
        "The gateway is listening on a target port (port 80) that is not defined in the Service associated with its workload instances (Pod selector istio=ingressgateway).",
    );
    none(&gateway_service(80), "IST0162");
    // Without a Service for the gateway workload there is nothing to compare with.
    none(GATEWAY, "IST0162");
}

fn subset_config(version: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports:
  - {{name: http, port: 9080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec:
  address: 10.0.0.11
  labels: {{app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: {version}}}
"
    )
}

#[test]
fn ist0173_subset_selects_no_workload() {
    one(
        &subset_config("v9"),
        "IST0173",
        "The Subset v1 defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
    );
    none(&subset_config("v1"), "IST0173");
}

#[test]
fn ist0174_unknown_destination_rule_host() {
    let dr = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reveiws
";
    let m = one(
        dr,
        "IST0174",
        "The host reveiws defined in the DestinationRule does not match any services in the mesh.",
    );
    assert_eq!(m.level, Level::Warning);
    none(&subset_config("v1"), "IST0174");
}

#[test]
fn ist0106_and_ist0133_from_validation() {
    let loaded = sluice_api::decode_str(
        Path::new("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: -3s\n    route:\n    - destination: {host: a.example.com}\n",
    );
    let mut diags = loaded.diagnostics.clone();
    for r in &loaded.resources {
        diags.extend(sluice_api::validate(r));
    }
    let msgs: Vec<Message> = diags.iter().map(from_diagnostic).collect();
    assert!(
        msgs.iter().any(|m| m.code == "IST0106"
            && m.level == Level::Error
            && m.text.starts_with("Schema validation error: ")),
        "{msgs:#?}"
    );
    let warn = sluice_api::Diagnostic {
        severity: sluice_api::Severity::Warning,
        file: "w.yaml".into(),
        line: 3,
        resource: Some("Gateway default/g".into()),
        field: "spec.servers[0].hosts".into(),
        message: "server has no hosts".into(),
    };
    assert_eq!(
        from_diagnostic(&warn).to_string(),
        "Warning [IST0133] (Gateway default/g w.yaml:3) Schema validation warning: spec.servers[0].hosts: server has no hosts"
    );
}

fn seeds(names: &[&str]) -> Vec<sluice_api::Resource> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/tests/fixtures/seeds");
    let paths: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    resources_from_files(&refs)
}

#[test]
fn seed_004_port_81_is_flagged_and_port_80_is_not() {
    let broken = analyze(&seeds(&[
        "004-3-serviceentry-worldclockapi-port81.yaml",
        "004-4-virtualservice-worldclockapi-timeout.yaml",
    ]));
    let hits = with_code(&broken, "SLU0001");
    assert_eq!(hits.len(), 1, "{broken:#?}");
    assert!(hits[0].text.contains(
        "every request for this host goes to port 81, the ServiceEntry's only port, whatever port the client called; clients calling port 80 fail"
    ));
    assert!(hits[0]
        .to_string()
        .starts_with("Warning [SLU0001] (VirtualService default/worldclockapi-timeout "));
    let fixed = analyze(&seeds(&[
        "004-5-serviceentry-worldclockapi-port80.yaml",
        "004-4-virtualservice-worldclockapi-timeout.yaml",
    ]));
    assert!(fixed.is_empty(), "{fixed:#?}");
}

#[test]
fn seed_004_recommendation_line_format_and_order() {
    let msgs = analyze(&seeds(&[
        "004-1-destinationrule-recommendation.yaml",
        "004-2-virtualservice-recommendation.yaml",
    ]));
    let lines: Vec<String> = msgs.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("Error [IST0101] (VirtualService default/recommendation "));
    assert!(lines[0].ends_with(
        "004-2-virtualservice-recommendation.yaml:12) Referenced host not found: \"recommendation\""
    ));
    assert!(lines[1].starts_with("Warning [IST0174] (DestinationRule default/recommendation "));
}

fn sidecar(name: &str, selector: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: tutorial}}
spec:
{selector}  egress:
  - hosts: [\"./*\"]
"
    )
}

#[test]
fn ist0111_two_sidecars_without_selectors() {
    let yaml = format!("{}---{}", sidecar("a", ""), sidecar("b", ""));
    let msgs = run(&yaml);
    let hits = with_code(&msgs, "IST0111");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        r#"The Sidecars [tutorial/a tutorial/b] in namespace "tutorial" have no workload selector, which can lead to undefined behavior."#
    );
    assert_eq!(hits[0].level.as_str(), "Error");
    let one_default = format!(
        "{}---{}",
        sidecar("a", ""),
        sidecar("b", "  workloadSelector: {labels: {app: customer}}\n")
    );
    none(&one_default, "IST0111");
}

#[test]
fn ist0110_two_sidecars_select_one_workload() {
    let we = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: customer-v1, namespace: tutorial}
spec:
  address: 10.1.0.11
  labels: {app: customer, version: v1}
";
    let yaml = format!(
        "{we}---{}---{}",
        sidecar("by-app", "  workloadSelector: {labels: {app: customer}}\n"),
        sidecar(
            "by-version",
            "  workloadSelector: {labels: {version: v1}}\n"
        )
    );
    let msgs = run(&yaml);
    let hits = with_code(&msgs, "IST0110");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert!(
        hits[0]
            .text
            .contains(r#"select the same workload pod "customer-v1""#),
        "{}",
        hits[0].text
    );
    let apart = format!(
        "{we}---{}---{}",
        sidecar("by-app", "  workloadSelector: {labels: {app: customer}}\n"),
        sidecar(
            "by-version",
            "  workloadSelector: {labels: {version: v2}}\n"
        )
    );
    none(&apart, "IST0110");
}
