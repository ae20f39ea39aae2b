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

/// Self-signed certificates (made for these tests) valid from 2000-01-01 to 2099-12-31, from
/// 2000 to 2001, and from 2090 to 2099.
const CERT_VALID: &str = "\
-----BEGIN CERTIFICATE-----
MIIBJjCBzaADAgECAgEBMAoGCCqGSM49BAMCMBwxGjAYBgNVBAMMEXZhbGlkLmV4
YW1wbGUuY29tMCAXDTAwMDEwMTAwMDAwMFoYDzIwOTkxMjMxMDAwMDAwWjAcMRow
GAYDVQQDDBF2YWxpZC5leGFtcGxlLmNvbTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABGvLhO5Y5/R9NY5pACA84q917ASo7Lufp7Iij+GA4iUibOlfj7BO3JE/NJVk
w694BLUAgxVOMU0bm8Wdr8gDZpkwCgYIKoZIzj0EAwIDSAAwRQIhANeW/bEAZGq4
pjQ0FxgkPPqNrax7MH0OxKNYFLw3IAxrAiAuabLX0Fyhs/OMmuaYRmJuL8cfYidH
OedsYepHRI7Y/A==
-----END CERTIFICATE-----
";
const CERT_EXPIRED: &str = "\
-----BEGIN CERTIFICATE-----
MIIBJzCBz6ADAgECAgEBMAoGCCqGSM49BAMCMB4xHDAaBgNVBAMME2V4cGlyZWQu
ZXhhbXBsZS5jb20wHhcNMDAwMTAxMDAwMDAwWhcNMDEwMTAxMDAwMDAwWjAeMRww
GgYDVQQDDBNleHBpcmVkLmV4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEa8uE7ljn9H01jmkAIDzir3XsBKjsu5+nsiKP4YDiJSJs6V+PsE7ckT80
lWTDr3gEtQCDFU4xTRubxZ2vyANmmTAKBggqhkjOPQQDAgNHADBEAiBKniUZknc2
+OAR88k6C6hBU62yXdORj2MHLs6TYXFveAIgSIEhwKpFyrr3ZoC2dIsw3WwWWtkA
PC7rFkfVhPBWD0s=
-----END CERTIFICATE-----
";
const CERT_FUTURE: &str = "\
-----BEGIN CERTIFICATE-----
MIIBKjCB0aADAgECAgEBMAoGCCqGSM49BAMCMB0xGzAZBgNVBAMMEmZ1dHVyZS5l
eGFtcGxlLmNvbTAiGA8yMDkwMDEwMTAwMDAwMFoYDzIwOTkwMTAxMDAwMDAwWjAd
MRswGQYDVQQDDBJmdXR1cmUuZXhhbXBsZS5jb20wWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARry4TuWOf0fTWOaQAgPOKvdewEqOy7n6eyIo/hgOIlImzpX4+wTtyR
PzSVZMOveAS1AIMVTjFNG5vFna/IA2aZMAoGCCqGSM49BAMCA0gAMEUCIQDSXVXw
EHGH1GykR8tFubHnOfCTKpzgv744DAbyxu62cAIgDYsAvKaSPHdFDZB7lqAY13hf
H4Bc5HofWt6QJh9vF/Q=
-----END CERTIFICATE-----
";

/// A Gateway whose server takes `credentialName: secret`, and Secrets: `good-cert` (a valid
/// certificate), `bad-cert` (no certificate keys), `garbage-cert` (not PEM), `expired-cert`
/// and `future-cert`.
fn tls_gateway(secret: &str) -> String {
    let pem_secret = |name: &str, cert: &str| {
        let cert: String = cert.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData:\n  tls.key: a2V5\n  tls.crt: |\n{cert}"
        )
    };
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
metadata: {{name: bad-cert, namespace: istio-system}}
data:
  other: eA==
---
apiVersion: v1
kind: Secret
metadata: {{name: garbage-cert, namespace: istio-system}}
stringData: {{cert: not a certificate, key: not a key}}
{}{}{}",
        pem_secret("good-cert", CERT_VALID),
        pem_secret("expired-cert", CERT_EXPIRED),
        pem_secret("future-cert", CERT_FUTURE),
    )
}

#[test]
fn ist0101_credential_name_and_ist0161() {
    one(
        &tls_gateway("missing-cert"),
        "IST0101",
        r#"Referenced credentialName not found: "missing-cert""#,
    );
    // The Secret is looked up in the gateway workload's namespace, which the message names.
    for secret in ["bad-cert", "garbage-cert", "expired-cert", "future-cert"] {
        let m = one(
            &tls_gateway(secret),
            "IST0161",
            "The credential referenced by the Gateway tls-gw in namespace istio-system is invalid, which can cause the traffic not to work as expected.",
        );
        assert_eq!(m.origin.as_deref(), Some("Gateway default/tls-gw"));
    }
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
        "The VirtualServices default/vs,default/vs2 associated with mesh gateway define the same host */httpbin.org which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
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
fn ist0112_multi_port_destination() {
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
    // Istio asks for the port in a sidecar's routes too.
    one(
        &format!("{SE_HTTPBIN}---{}", vs_to("{host: httpbin.org}")),
        "IST0112",
        "exposes multiple ports [80 443]",
    );
    none(
        &format!(
            "{SE_HTTPBIN}---{}",
            vs_to("{host: httpbin.org, port: {number: 443}}")
        ),
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
        "DestinationRule default/dr in namespace default has TLS mode set to SIMPLE but no caCertificates are set to validate server identity for host: httpbin.org",
    );
    one(
        &dr_tls("{mode: SIMPLE}"),
        "IST0129",
        "for host: httpbin.org at port number:443",
    );
    none(
        &dr_tls("{mode: SIMPLE, caCertificates: /etc/ca.pem}"),
        "IST0128",
    );
    none(
        &dr_tls("{mode: SIMPLE, caCertificates: /etc/ca.pem}"),
        "IST0129",
    );
    // A credentialName gives the CA only to the workloads a workloadSelector picks.
    let credential = dr_tls("{mode: SIMPLE, credentialName: client-cert}");
    one(&credential, "IST0128", "has TLS mode set to SIMPLE");
    one(&credential, "IST0129", "at port number:443");
    let selected = credential.replace(
        "  host: httpbin.org\n",
        "  host: httpbin.org\n  workloadSelector: {matchLabels: {app: client}}\n",
    );
    none(&selected, "IST0128");
    none(&selected, "IST0129");
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
    let msgs = run(&two_gateways("*.example.com"));
    let hits = with_code(&msgs, "IST0145");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        "Conflict with gateways istio-system/gw2 (workload selector istio=ingressgateway, port 80, hosts *.example.com)."
    );
    // Istio compares hosts as written: a wildcard and a name under it do not conflict.
    none(&two_gateways("a.example.com"), "IST0145");
    none(&two_gateways("*.example.org"), "IST0145");
    // A selector that contains the other picks the same workload.
    let sub = two_gateways("*.example.com").replace(
        "metadata: {name: gw2, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}",
        "metadata: {name: gw2, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway, app: edge}",
    );
    let msgs = run(&sub);
    let hits = with_code(&msgs, "IST0145");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert!(hits[1]
        .text
        .contains("(workload selector app=edge,istio=ingressgateway, port 80,"));
    let apart = sub.replace(
        "{istio: ingressgateway, app: edge}",
        "{istio: egressgateway}",
    );
    none(&apart, "IST0145");
}

fn gateway_service(port: u32, target: &str) -> String {
    format!(
        "{GATEWAY}---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway, app: istio-ingressgateway}}
  ports:
  - {{name: http2, port: {port}, targetPort: {target}}}
"
    )
}

#[test]
fn ist0162_gateway_port_not_on_service() {
    one(
        &gateway_service(8081, "8080"),
        "IST0162",
        "The gateway is listening on a target port (port 80) that is not defined in the Service associated with its workload instances (Pod selector istio=ingressgateway).",
    );
    none(&gateway_service(8081, "80"), "IST0162");
    // The server listens on the Service port, which the Service translates to its target.
    none(&gateway_service(80, "8080"), "IST0162");
    // A named target port is the port itself.
    none(&gateway_service(80, "http"), "IST0162");
    // Only TCP ports count.
    one(
        &gateway_service(80, "80").replace("targetPort: 80}", "targetPort: 80, protocol: UDP}"),
        "IST0162",
        "(port 80)",
    );
    // Without a Service, the ingress gateway's Service istioctl assumes: 80, 443, 31400, 15443.
    none(GATEWAY, "IST0162");
    one(
        &GATEWAY.replace("number: 80,", "number: 8004,"),
        "IST0162",
        "(port 8004)",
    );
    // A workload no Service in the config selects is not checked.
    none(
        &GATEWAY.replace("istio: ingressgateway", "app: private"),
        "IST0162",
    );
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

/// A match block's `name` only labels it: two blocks that differ only by name are duplicates.
#[test]
fn ist0130_and_ist0131_named_match_blocks_are_compared_without_their_names() {
    let yaml = vs_rules(&format!(
        "  - name: first\n    match: [{{name: api, uri: {{prefix: /api}}}}]\n{ROUTE}  - name: second\n    match: [{{uri: {{prefix: /api}}}}]\n{ROUTE}"
    ));
    one(
        &yaml,
        "IST0131",
        r#"VirtualService rule "second" match #0 is not used (duplicate/overlapping match in rule "first")."#,
    );
    one(
        &yaml,
        "IST0130",
        r#"VirtualService rule "second" not used (all matches used by prior rules)."#,
    );
}

/// Decoded but not validated: Istio's analyzers see a resource that fails validation too.
fn run_unvalidated(yaml: &str) -> Vec<Message> {
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), yaml);
    analyze(&loaded.resources)
}

#[test]
fn ist0134_protocol_is_compared_without_case() {
    one(
        &se(
            "db",
            "db.example.com",
            "{number: 5432, name: tcp, protocol: tcp}",
            "",
        ),
        "IST0134",
        "ServiceEntry addresses are required for this protocol.",
    );
}

fn exported_se(export_to: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: team-a}}
spec:
  hosts: [api.example.com]
  exportTo: {export_to}
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-ext, namespace: istio-system}}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{{port: 443, sniHosts: [api.example.com]}}]
    route:
    - destination: {{host: api.example.com, port: {{number: 443}}}}
"
    )
}

/// `exportTo` decides who sees a host: a VirtualService in istio-system cannot route to a
/// ServiceEntry exported only to another namespace.
#[test]
fn ist0101_host_not_exported_to_the_virtual_service() {
    let m = one(
        &exported_se("[team-b]"),
        "IST0101",
        r#"Referenced host not found: "api.example.com""#,
    );
    assert_eq!(
        m.origin.as_deref(),
        Some("VirtualService istio-system/to-ext")
    );
    one(&exported_se("[.]"), "IST0101", "api.example.com");
    none(&exported_se("[istio-system]"), "IST0101");
    none(&exported_se("['*']"), "IST0101");
    none(&exported_se("[]"), "IST0101");
}

#[test]
fn ist0101_service_export_annotation_and_wildcard_service_entries() {
    let service = |annotation: &str| {
        format!(
            "
apiVersion: v1
kind: Service
metadata:
  name: details
  namespace: shop
  annotations: {{networking.istio.io/exportTo: \"{annotation}\"}}
spec:
  selector: {{app: details}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: details, namespace: front}}
spec:
  hosts: [details.shop.svc.cluster.local]
  http:
  - route:
    - destination: {{host: details.shop.svc.cluster.local}}
"
        )
    };
    one(
        &service("back"),
        "IST0101",
        "details.shop.svc.cluster.local",
    );
    none(&service("back, front"), "IST0101");
    none(&service("*"), "IST0101");
    // A name under a wildcard ServiceEntry host is found, as Istio's analyzer finds it.
    let wildcard = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: eu}
spec:
  hosts: ['*.eu.example.com']
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: eu}
spec:
  hosts: [shop.eu.example.com]
  http:
  - route:
    - destination: {host: shop.eu.example.com}
";
    none(wildcard, "IST0101");
    one(
        &wildcard.replace("host: shop.eu.example.com", "host: shop.us.example.com"),
        "IST0101",
        r#"Referenced host not found: "shop.us.example.com""#,
    );
}

fn mesh_vs(name: &str, ns: &str, host: &str, export_to: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: ['{host}']
  exportTo: {export_to}
  tcp:
  - route:
    - destination: {{host: '{host}'}}
"
    )
}

/// IST0109 groups VirtualServices by exportTo scope and host; one exported to some namespaces
/// also conflicts with one exported everywhere whose host overlaps it, wildcards included.
#[test]
fn ist0109_scopes_and_wildcards() {
    let yaml = format!(
        "{}{}",
        mesh_vs("narrow", "foo", "*.example.com", "[bar]"),
        mesh_vs("wide", "baz", "api.example.com", "['*']")
    );
    let msgs = run_unvalidated(&yaml);
    let hits = with_code(&msgs, "IST0109");
    assert_eq!(hits.len(), 2, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        "The VirtualServices baz/wide,foo/narrow associated with mesh gateway define the same host bar/*.example.com which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
    );
    // Exported to different namespaces only: no proxy sees both.
    let apart = format!(
        "{}{}",
        mesh_vs("a", "foo", "api.example.com", "[bar]"),
        mesh_vs("b", "baz", "api.example.com", "[qux]")
    );
    assert!(with_code(&run_unvalidated(&apart), "IST0109").is_empty());
    // Istio compares VirtualServices exported everywhere by the host as written.
    let both_wide = format!(
        "{}{}",
        mesh_vs("a", "foo", "*.example.com", "['*']"),
        mesh_vs("b", "baz", "api.example.com", "['*']")
    );
    assert!(with_code(&run_unvalidated(&both_wide), "IST0109").is_empty());
    // Without http rules too.
    let same = format!(
        "{}{}",
        mesh_vs("a", "foo", "api.example.com", "[bar]"),
        mesh_vs("b", "baz", "api.example.com", "[bar]")
    );
    assert_eq!(with_code(&run_unvalidated(&same), "IST0109").len(), 2);
}

#[test]
fn ist0132_when_the_gateway_does_not_exist_and_internal_gateways() {
    let msgs = run(&format!(
        "{SE_HTTPBIN}---{}",
        gw_vs("istio-system/nope", "a.example.com")
    ));
    assert_eq!(with_code(&msgs, "IST0101").len(), 1, "{msgs:#?}");
    let hits = with_code(&msgs, "IST0132");
    assert_eq!(hits.len(), 1, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        "one or more host [a.example.com] defined in VirtualService default/vs not found in Gateway istio-system/nope."
    );
    // A Gateway made of a Kubernetes Gateway is istioctl's IST0166, not a missing gateway.
    let internal = run_unvalidated(&format!(
        "{SE_HTTPBIN}---{}",
        gw_vs(
            "istio-system/gw~istio-autogenerated-k8s-gateway~http",
            "a.example.com",
        )
    ));
    assert!(with_code(&internal, "IST0101").is_empty(), "{internal:#?}");
}

#[test]
fn ist0173_node_topology_labels_are_not_matched() {
    let with_topology = subset_config("v1").replace(
        "labels: {version: v1}",
        "labels: {version: v1, topology.kubernetes.io/zone: z1}",
    );
    assert_ne!(
        with_topology,
        subset_config("v1"),
        "the subset has a zone label"
    );
    none(&with_topology, "IST0173");
    // An empty value never matches: Istio does not set empty topology labels.
    let empty = subset_config("v1").replace(
        "labels: {version: v1}",
        "labels: {version: v1, topology.kubernetes.io/zone: ''}",
    );
    one(&empty, "IST0173", "does not select any pods");
}

/// The webhook's warning for a rule after a catch-all is IST0130, as istioctl reports it, and
/// one message with the analyzer's.
#[test]
fn unused_rule_warning_is_ist0130_once() {
    let yaml = vs_rules(&format!(
        "  - name: first\n{ROUTE}  - name: second\n{ROUTE}"
    ));
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), &yaml);
    let mut msgs: Vec<Message> = loaded
        .resources
        .iter()
        .flat_map(sluice_api::validate)
        .map(|d| from_diagnostic(&d))
        .collect();
    assert!(msgs.iter().any(|m| m.code == "IST0130"), "{msgs:#?}");
    msgs.extend(analyze(&loaded.resources));
    sluice_model::analyze::sort(&mut msgs);
    let hits = with_code(&msgs, "IST0130");
    assert_eq!(hits.len(), 1, "{msgs:#?}");
    assert_eq!(
        hits[0].text,
        r#"VirtualService rule "second" not used (only the last rule can have no matches)."#
    );
    assert!(with_code(&msgs, "IST0133").is_empty(), "{msgs:#?}");
}

/// Resources that fail validation still reach the analyzers: out-of-range numbers and empty
/// names must neither panic nor be read as something else.
#[test]
fn invalid_resources_are_analyzed_without_panics() {
    let yaml = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 4294967295, name: http, protocol: HTTP}
    hosts: ['']
  - port: {number: 0, name: http2, protocol: HTTP}
    hosts: ['*/*']
    tls: {mode: SIMPLE, credentialName: ''}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{port: 0, targetPort: 'not-a-number'}, {port: 80, targetPort: 0}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ['']
  gateways: ['', 'istio-system/', 'mesh']
  http:
  - match: [{uri: {prefix: ''}}, {uri: {prefix: ''}, port: 4294967295}]
    route:
    - destination: {host: '', port: {number: 0}, subset: ''}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec:
  host: ''
  trafficPolicy:
    portLevelSettings:
    - tls: {mode: SIMPLE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se}
spec:
  hosts: ['', '*']
  ports: [{number: 0, name: x, protocol: ''}]
";
    let msgs = run_unvalidated(yaml);
    // The server on port 4294967295 is not one the Service reaches; port 0 is no port. A
    // named target port that is no number is the port itself (0 here), never a panic.
    let ports = with_code(&msgs, "IST0162");
    assert_eq!(ports.len(), 1, "{msgs:#?}");
    assert!(ports[0].text.contains("(port 4294967295)"));
    // A port-level setting without a port still names the rule's port as Istio prints it.
    let port_level = with_code(&msgs, "IST0129");
    assert_eq!(port_level.len(), 1, "{msgs:#?}");
    assert!(
        port_level[0].text.ends_with("for host:  at port "),
        "{}",
        port_level[0].text
    );
    // An empty gateway name is no gateway; `istio-system/` names one that does not exist.
    let gateways: Vec<&str> = with_code(&msgs, "IST0101")
        .iter()
        .map(|m| m.text.as_str())
        .filter(|t| t.contains("gateway"))
        .collect();
    assert_eq!(
        gateways,
        [r#"Referenced gateway not found: "istio-system/""#],
        "{msgs:#?}"
    );
}

// === Pods, Namespaces and Gateway API Gateways in the input ===

fn pod(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  containers: [{{name: app, image: app}}]
"
    )
}

fn selector_gateway(name: &str, selector: &str, credential: Option<&str>) -> String {
    let tls = credential.map_or(String::new(), |c| {
        format!("    tls: {{mode: SIMPLE, credentialName: {c}}}\n")
    });
    let port = if credential.is_some() {
        "{number: 443, name: https, protocol: HTTPS}"
    } else {
        "{number: 80, name: http, protocol: HTTP}"
    };
    format!(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {selector}
  servers:
  - port: {port}
    hosts: [\"*.example.com\"]
{tls}"
    )
}

#[test]
fn ist0101_gateway_selector_matches_no_pod() {
    let m = one(
        &selector_gateway("gw", "{istio: ingresstypo}", None),
        "IST0101",
        r#"Referenced selector not found: "istio=ingresstypo""#,
    );
    assert_eq!(m.origin.as_deref(), Some("Gateway default/gw"));
    assert_eq!(m.line, 6, "the line of the selector's label");
    // The ingress gateway Pod istioctl assumes.
    none(
        &selector_gateway("gw", "{istio: ingressgateway}", None),
        "IST0101",
    );
    // Without Pods in the input, the assumed Pod stands for a real ingress gateway Pod, which
    // has more labels than it.
    let narrower = selector_gateway("gw", "{istio: ingressgateway, tier: edge}", None);
    none(&narrower, "IST0101");
    one(
        &format!(
            "{narrower}---{}",
            pod("istio-system", "gw-1", "{istio: ingressgateway}")
        ),
        "IST0101",
        r#"Referenced selector not found: "istio=ingressgateway,tier=edge""#,
    );
    // A Pod of the input, in any namespace.
    let custom = selector_gateway("gw", "{app: edge}", None);
    none(
        &format!("{custom}---{}", pod("edge", "edge-1", "{app: edge}")),
        "IST0101",
    );
    // Without Pods in the input, a Service that selects such workloads stands for them.
    let service = "
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: edge}
spec:
  selector: {app: edge}
  ports:
  - {name: http, port: 80}
";
    none(&format!("{custom}---{service}"), "IST0101");
    // With Pods, only Pods count.
    one(
        &format!(
            "{custom}---{service}---{}",
            pod("edge", "other", "{app: other}")
        ),
        "IST0101",
        r#"Referenced selector not found: "app=edge""#,
    );
}

#[test]
fn gateway_credentials_are_looked_up_in_the_namespace_of_its_pods() {
    let secret = |ns: &str| {
        format!(
            "
apiVersion: v1
kind: Secret
metadata: {{name: edge-cert, namespace: {ns}}}
type: kubernetes.io/tls
stringData: {{tls.crt: x, tls.key: y}}
"
        )
    };
    let gw = selector_gateway("gw", "{app: edge}", Some("edge-cert"));
    let edge_pod = pod("edge", "edge-1", "{app: edge}");
    one(
        &format!("{gw}---{edge_pod}---{}", secret("istio-system")),
        "IST0101",
        r#"Referenced credentialName not found: "edge-cert""#,
    );
    let m = one(
        &format!("{gw}---{edge_pod}---{}", secret("edge")),
        "IST0161",
        "The credential referenced by the Gateway gw in namespace edge is invalid",
    );
    assert_eq!(m.origin.as_deref(), Some("Gateway default/gw"));
}

#[test]
fn ist0162_with_pods_counts_the_services_that_select_them() {
    let gw = selector_gateway("gw", "{app: edge}", None);
    let service = |ns: &str, port: u32| {
        format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: edge, namespace: {ns}}}
spec:
  selector: {{app: edge}}
  ports:
  - {{name: http, port: {port}}}
"
        )
    };
    let edge_pod = pod("edge", "edge-1", "{app: edge, tier: front}");
    none(
        &format!("{gw}---{edge_pod}---{}", service("edge", 80)),
        "IST0162",
    );
    // A Service of another namespace does not select the Pod.
    one(
        &format!("{gw}---{edge_pod}---{}", service("other", 80)),
        "IST0162",
        "(port 80)",
    );
}

#[test]
fn ist0145_with_pods_needs_one_pod_both_gateways_select() {
    let yaml = |pod_labels: &str| {
        format!(
            "{}---{}---{}",
            selector_gateway("a", "{istio: ingressgateway, tier: edge}", None),
            selector_gateway("b", "{istio: ingressgateway}", None),
            pod("istio-system", "gw-1", pod_labels)
        )
    };
    let msgs = run(&yaml("{istio: ingressgateway, tier: edge}"));
    assert_eq!(with_code(&msgs, "IST0145").len(), 2, "{msgs:#?}");
    none(&yaml("{istio: ingressgateway, tier: back}"), "IST0145");
}

#[test]
fn sidecar_selectors_are_matched_with_the_pods_of_their_namespace() {
    let pods = format!(
        "{}---{}",
        pod("tutorial", "customer-1", "{app: customer, version: v1}"),
        pod("other", "preference-1", "{app: preference}")
    );
    let yaml = format!(
        "{pods}---{}---{}---{}",
        sidecar("by-app", "  workloadSelector: {labels: {app: customer}}\n"),
        sidecar(
            "by-version",
            "  workloadSelector: {labels: {version: v1}}\n"
        ),
        sidecar(
            "elsewhere",
            "  workloadSelector: {labels: {app: preference}}\n"
        )
    );
    let msgs = run(&yaml);
    let conflicts: Vec<&str> = with_code(&msgs, "IST0110")
        .iter()
        .filter_map(|m| m.origin.as_deref())
        .collect();
    assert_eq!(
        conflicts,
        ["Sidecar tutorial/by-app", "Sidecar tutorial/by-version"]
    );
    assert!(
        with_code(&msgs, "IST0110")[0]
            .text
            .contains(r#"select the same workload pod "customer-1""#),
        "{msgs:#?}"
    );
    let missing = with_code(&msgs, "IST0101");
    assert_eq!(missing.len(), 1, "{msgs:#?}");
    assert_eq!(
        missing[0].origin.as_deref(),
        Some("Sidecar tutorial/elsewhere")
    );
    assert_eq!(
        missing[0].text,
        r#"Referenced selector not found: "app=preference""#
    );
    // A WorkloadEntry is a workload too.
    let we = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: preference-vm, namespace: tutorial}
spec:
  address: 10.1.0.12
  labels: {app: preference}
";
    none(&format!("{yaml}---{we}"), "IST0101");
    // Without Pods or WorkloadEntries, a Service of the namespace stands for the workloads.
    let lone = sidecar("by-app", "  workloadSelector: {labels: {app: customer}}\n");
    one(
        &lone,
        "IST0101",
        r#"Referenced selector not found: "app=customer""#,
    );
    let service = "
apiVersion: v1
kind: Service
metadata: {name: customer, namespace: tutorial}
spec:
  selector: {app: customer}
  ports:
  - {name: http, port: 8080}
";
    none(&format!("{lone}---{service}"), "IST0101");
}

#[test]
fn ist0101_authorization_policy_namespace_no_namespace_declares() {
    let policy = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - from:
    - source:
        namespaces: [shop, \"front*\", \"*-system\", bogus]
        notNamespaces: [also-bogus]
";
    let namespaces = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: frontend}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
";
    let msgs = run(&format!("{policy}---{namespaces}"));
    let texts: Vec<(&str, u32)> = with_code(&msgs, "IST0101")
        .iter()
        .map(|m| (m.text.as_str(), m.line))
        .collect();
    assert_eq!(
        texts,
        [
            (r#"Referenced namespace not found: "bogus""#, 9),
            (r#"Referenced namespace not found: "also-bogus""#, 10),
        ]
    );
    // Without Namespace objects, nothing says which namespaces exist.
    none(policy, "IST0101");
}

const KUBERNETES_GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, hostname: \"*.example.com\", port: 80, protocol: HTTP}
";

#[test]
fn virtual_services_may_name_a_gateway_api_gateway() {
    let ok = format!(
        "{KUBERNETES_GATEWAY}---{SE_HTTPBIN}---{}",
        gw_vs("web", "shop.example.com")
    );
    none(&ok, "IST0101");
    none(&ok, "IST0132");
    let m = one(
        &format!("{KUBERNETES_GATEWAY}---{}", gw_vs("web", "shop.example.org")),
        "IST0132",
        "one or more host [shop.example.org] defined in VirtualService default/vs not found in Gateway default/web.",
    );
    assert_eq!(m.origin.as_deref(), Some("VirtualService default/vs"));
    // A listener without a hostname admits every host.
    let any = KUBERNETES_GATEWAY.replace("hostname: \"*.example.com\", ", "");
    none(
        &format!("{any}---{}", gw_vs("web", "shop.example.org")),
        "IST0132",
    );
}

#[test]
fn ist0173_subsets_are_matched_with_the_pods_their_service_selects() {
    let service = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: west
    labels: {topology.kubernetes.io/region: us-west-1}
";
    let reviews = pod("default", "reviews-1", "{app: reviews, version: v1}");
    none(&format!("{service}---{reviews}"), "IST0173");
    // A Pod the Service does not select (another namespace, another app) does not count: no
    // subset selects anything then, not even the one of topology labels only.
    let elsewhere = pod("other", "reviews-1", "{app: reviews, version: v1}");
    let ratings = pod("default", "ratings-1", "{app: ratings, version: v1}");
    for other in [elsewhere, ratings] {
        let msgs = run(&format!("{service}---{other}"));
        let texts: Vec<&str> = with_code(&msgs, "IST0173")
            .iter()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(texts.len(), 2, "{msgs:#?}");
        assert!(texts[0].starts_with("The Subset v1 defined"), "{texts:?}");
    }
}

/// Pods, Namespaces and Gateway API Gateways are read for analysis only: a proxy compiles the
/// same config with them as without (a Gateway API Gateway is not served as Istio's).
#[test]
fn kinds_read_for_analysis_do_not_change_what_a_proxy_serves() {
    let base = format!("{SE_HTTPBIN}---{}", gw_vs("web", "shop.example.com"));
    let extra = format!(
        "{KUBERNETES_GATEWAY}---{}---
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
",
        pod("default", "gw-1", "{istio: ingressgateway}")
    );
    let with = format!("{base}---{extra}");
    let labels = [("istio", "ingressgateway")];
    let (plain, read) = (
        common::gateway_snapshot("default", &labels, &base),
        common::gateway_snapshot("default", &labels, &with),
    );
    assert!(read.gateway_ports.is_empty(), "{:?}", read.gateway_ports);
    assert_eq!(plain.gateway_ports.len(), read.gateway_ports.len());
    assert_eq!(plain.diagnostics, read.diagnostics);
    let sidecar = |yaml: &str| {
        let snap = common::snapshot_in("default", &[("app", "web")], yaml);
        let clusters: Vec<String> = snap.clusters.keys().map(ToString::to_string).collect();
        (
            clusters,
            snap.services.len(),
            snap.workloads.len(),
            snap.diagnostics,
        )
    };
    assert_eq!(sidecar(&base), sidecar(&with));
}
