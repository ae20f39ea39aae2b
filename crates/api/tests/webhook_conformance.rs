//! Fields of Istio's current API that sluice accepts, and the admission-webhook / CRD-schema
//! rules that go with them: for each, a small resource that must be accepted and one that must be
//! refused with an error on the named field.
//!
//! The YAML here is written for these tests; `scripts/conformance/validation.py` measures the
//! same behaviour against Istio's own corpus.

use std::path::Path;

use sluice_api::{decode_str, validate, Diagnostic};

/// The API group of each kind, for the document header.
fn api_version(kind: &str) -> &'static str {
    match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io/v1",
        _ => "networking.istio.io/v1",
    }
}

/// Decodes and validates a `kind` named `ns/t` whose spec is `spec` (at column 0); every
/// diagnostic, decoding's included.
fn diagnostics(kind: &str, spec: &str) -> Vec<Diagnostic> {
    let mut text = format!(
        "apiVersion: {}\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\nspec:\n",
        api_version(kind)
    );
    for line in spec.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    let loaded = decode_str(Path::new("t.yaml"), &text);
    let mut out = loaded.diagnostics;
    for res in &loaded.resources {
        out.extend(validate(res));
    }
    out
}

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}\n")).collect()
}

/// `spec` is accepted: no error at all (warnings allowed).
#[track_caller]
fn accepted(kind: &str, spec: &str) {
    let diags = diagnostics(kind, spec);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).cloned().collect();
    assert!(
        errors.is_empty(),
        "expected {kind} to be accepted:\n{spec}\nbut got:\n{}",
        render(&errors)
    );
}

/// `spec` is refused with an error on `field` whose message contains `words`.
#[track_caller]
fn refused(kind: &str, spec: &str, field: &str, words: &str) {
    let diags = diagnostics(kind, spec);
    let hit = diags
        .iter()
        .any(|d| d.is_error() && d.field == field && d.message.contains(words));
    assert!(
        hit,
        "expected an error on {field} containing {words:?} for {kind}:\n{spec}\ngot:\n{}",
        render(&diags)
    );
}

// === DestinationRule ===

const DR: &str = "DestinationRule";

#[test]
fn destination_rule_warmup() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    warmup: {duration: 60s, minimumPercent: 101}\n",
        "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
        "between 0 and 100",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    warmup: {aggression: 2}\n",
        "spec.trafficPolicy.loadBalancer.warmup.duration",
        "duration is required",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    warmup: {duration: 500us}\n",
        "spec.trafficPolicy.loadBalancer.warmup.duration",
        "greater than 1ms",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    warmup: {duration: 5s, aggression: 0}\n",
        "spec.trafficPolicy.loadBalancer.warmup.aggression",
        "greater than 0",
    );
    // Subsets and port-level policies are checked too.
    refused(
        DR,
        "host: a\nsubsets:\n- name: v1\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer:\n        warmup: {duration: 5s, aggression: -1}\n",
        "spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.warmup.aggression",
        "greater than 0",
    );
}

#[test]
fn destination_rule_http2_keepalive() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  connectionPool:\n    http:\n      http2KeepAlive: {interval: 30s, timeout: 3s}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  connectionPool:\n    http:\n      http2KeepAlive: {interval: 30s}\n",
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
        "timeout is required",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  connectionPool:\n    http:\n      http2KeepAlive: {interval: 0s, timeout: 1s}\n",
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
        "greater than 1ms",
    );
}

#[test]
fn destination_rule_outlier_http_error_codes() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  outlierDetection:\n    consecutive5xxErrors: 3\n    outlierDetectionHttpErrorCodes: [429, 503]\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  outlierDetection:\n    outlierDetectionHttpErrorCodes: [503, 600]\n",
        "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]",
        "100..599",
    );
}

#[test]
fn destination_rule_locality_lb() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer:\n    localityLbSetting:\n      enabled: true\n      failover: [{from: us-east, to: eu-west}]\n      failoverPriority: [tier]\n",
    );
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute:\n      - from: us-east/zone1/*\n        to: {us-east/zone1/*: 80, us-east/zone2/*: 20}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute:\n      - from: us-east/*\n        to: {us-east/*: 70, eu-west/*: 20}\n",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "total locality weight 90 != 100",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failover: [{from: us-east, to: us-east}]\n",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]",
        "must specify different regions",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failover: [{from: us-east, to: eu-west}]\n      distribute: [{from: us-east, to: {eu-west: 100}}]\n",
        "spec.trafficPolicy.loadBalancer.localityLbSetting",
        "can not simultaneously specify 'distribute' and 'failover'",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute:\n      - from: us-east/*/z\n        to: {eu-west: 100}\n",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute",
        "must be in the end",
    );
}

#[test]
fn destination_rule_zone_aware_lb() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer:\n    zoneAwareLbSetting:\n      enabled: true\n      minClusterSize: 3\n      failover: [{from: us-east, to: us-west}]\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    zoneAwareLbSetting: {minClusterSize: 0}\n",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.minClusterSize",
        "at least 1",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    zoneAwareLbSetting:\n      failoverPriority: [topology.kubernetes.io/zone]\n",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[0]",
        "must not use topology label",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    zoneAwareLbSetting: {enabled: true}\n    localityLbSetting: {enabled: true}\n",
        "spec.trafficPolicy.loadBalancer",
        "only one of localityLbSetting and zoneAwareLbSetting",
    );
}

#[test]
fn destination_rule_backend_utilization() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    backendUtilization:\n      errorUtilizationPenaltyPercent: 100\n      metricNamesForComputingUtilization: [named_metrics.cpu]\n      weightUpdatePeriod: 1s\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    simple: ROUND_ROBIN\n    backendUtilization: {weightUpdatePeriod: 1s}\n",
        "spec.trafficPolicy.loadBalancer",
        "only one of simple, consistentHash or backendUtilization",
    );
}

#[test]
fn destination_rule_cookie_attributes() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie:\n        name: session\n        ttl: 60s\n        attributes: [{name: SameSite, value: Strict}, {name: Secure}]\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie:\n        name: session\n        attributes: [{name: Secure}, {name: Secure}]\n",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1].name",
        "duplicate cookie attribute name: Secure",
    );
}

#[test]
fn destination_rule_tunnel_proxy_protocol_retry_budget() {
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  tunnel: {protocol: POST, targetHost: 10.0.0.1, targetPort: 8443}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  tunnel: {protocol: GET, targetHost: b.example.com, targetPort: 443}\n",
        "spec.trafficPolicy.tunnel.protocol",
        "\"CONNECT\" or \"POST\"",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  tunnel: {targetHost: b.example.com, targetPort: 0}\n",
        "spec.trafficPolicy.tunnel.targetPort",
        "tunnel target port is invalid",
    );
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  proxyProtocol: {version: V2}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  proxyProtocol: {version: V3}\n",
        "spec.trafficPolicy.proxyProtocol.version",
        "expected V1 or V2",
    );
    accepted(
        DR,
        "host: a\ntrafficPolicy:\n  retryBudget: {percent: 25, minRetryConcurrency: 3, budgetInterval: 10s}\n",
    );
    refused(
        DR,
        "host: a\ntrafficPolicy:\n  retryBudget: {percent: 120}\n",
        "spec.trafficPolicy.retryBudget.percent",
        "between 0 and 100",
    );
}

#[test]
fn destination_rule_workload_selector_is_match_labels() {
    accepted(DR, "host: a\nworkloadSelector:\n  matchLabels: {app: a}\n");
    refused(
        DR,
        "host: a\nworkloadSelector:\n  labels: {app: a}\n",
        "spec.workloadSelector.labels",
        "unknown field `labels`",
    );
    refused(
        DR,
        "host: a\nworkloadSelector:\n  matchLabels: {app: '*'}\n",
        "spec.workloadSelector.matchLabels.app",
        "wildcard is not supported",
    );
}

// === Gateway ===

const GW: &str = "Gateway";

fn gateway_tls(tls: &str) -> String {
    format!(
        "servers:\n- port: {{number: 443, name: https, protocol: HTTPS}}\n  hosts: [a.example.com]\n  tls:\n{}",
        tls.lines().map(|l| format!("    {l}\n")).collect::<String>()
    )
}

#[test]
fn gateway_tls_fields() {
    accepted(
        GW,
        &gateway_tls(
            "mode: SIMPLE\ncredentialName: cert\necdhCurves: [X25519, P-256]\ninsecureSkipVerify: false\nminProtocolVersion: TLSV1_2\n",
        ),
    );
    accepted(
        GW,
        &gateway_tls(
            "mode: SIMPLE\ntlsCertificates:\n- {serverCertificate: /c/rsa.pem, privateKey: /c/rsa.key}\n- {serverCertificate: /c/ec.pem, privateKey: /c/ec.key}\n",
        ),
    );
    refused(
        GW,
        &gateway_tls("mode: SIMPLE\ntlsCertificates:\n- {serverCertificate: /c/rsa.pem}\n"),
        "spec.servers[0].tls.tlsCertificates[0].privateKey",
        "SIMPLE TLS requires a private key",
    );
    refused(
        GW,
        &gateway_tls(
            "mode: SIMPLE\ncredentialName: cert\ntlsCertificates:\n- {serverCertificate: /c/a.pem, privateKey: /c/a.key}\n",
        ),
        "spec.servers[0].tls",
        "only one of credentialName, credentialNames",
    );
    refused(
        GW,
        &gateway_tls("mode: SIMPLE\ncredentialNames: [a, b, c]\n"),
        "spec.servers[0].tls.credentialNames",
        "at most 2 entries",
    );
    refused(
        GW,
        &gateway_tls("mode: ISTIO_MUTUAL\ncredentialNames: [a]\n"),
        "spec.servers[0].tls.credentialNames",
        "ISTIO_MUTUAL TLS cannot have associated credentialNames",
    );
    refused(
        GW,
        &gateway_tls("mode: SIMPLE\ncredentialName: cert\nmaxProtocolVersion: TLSV1_4\n"),
        "spec.servers[0].tls.maxProtocolVersion",
        "invalid TLS version TLSV1_4",
    );
}

// === Sidecar ===

const SC: &str = "Sidecar";

#[test]
fn sidecar_ingress_listeners() {
    accepted(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 127.0.0.1:8080\n  captureMode: IPTABLES\n  connectionPool:\n    http: {http1MaxPendingRequests: 10}\n- port: {number: 9443, protocol: HTTPS, name: https}\n  defaultEndpoint: unix:///var/run/app.sock\n  tls: {mode: SIMPLE, serverCertificate: /c/cert.pem, privateKey: /c/key.pem}\n",
    );
    refused(
        SC,
        "ingress:\n- defaultEndpoint: 127.0.0.1:8080\n",
        "spec.ingress[0].port",
        "port is required for ingress listeners",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 10.1.2.3:8080\n",
        "spec.ingress[0].defaultEndpoint",
        "defaultEndpoint must be of form",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n- port: {number: 9080, protocol: TCP, name: tcp}\n",
        "spec.ingress[1].port",
        "ports on IP bound listeners must be unique",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 9443, protocol: HTTPS, name: https}\n  tls: {mode: SIMPLE, credentialName: cert}\n",
        "spec.ingress[0].tls.credentialName",
        "credentialName is not currently supported",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  tls: {mode: SIMPLE, serverCertificate: /c/a.pem, privateKey: /c/a.key}\n",
        "spec.ingress[0].tls",
        "non HTTPS/TLS ports",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  bogus: 1\n",
        "spec.ingress[0].bogus",
        "unknown field `bogus`",
    );
}

/// sluice's own check (Istio skips such a listener at push time with a log line): a listener the
/// sidecar binds itself cannot take one of the sidecar's own ports, nor another's.
#[test]
fn sidecar_bound_listener_ports() {
    accepted(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  captureMode: NONE\n  defaultEndpoint: 127.0.0.1:8080\negress:\n- port: {number: 9081, protocol: HTTP, name: http}\n  captureMode: NONE\n  hosts: ['./*']\n",
    );
    // Captured (not bound) listeners may use any port.
    accepted(
        SC,
        "egress:\n- port: {number: 15001, protocol: HTTP, name: http}\n  hosts: ['./*']\n",
    );
    refused(
        SC,
        "egress:\n- port: {number: 15001, protocol: HTTP, name: http}\n  captureMode: NONE\n  hosts: ['./*']\n",
        "spec.egress[0].port.number",
        "port 15001 is the sidecar's own captured outbound port",
    );
    refused(
        SC,
        "ingress:\n- port: {number: 15021, protocol: HTTP, name: http}\n  captureMode: NONE\n  defaultEndpoint: 127.0.0.1:8080\n",
        "spec.ingress[0].port.number",
        "port 15021 is the sidecar's own health port",
    );
    // The ingress listener binds 0.0.0.0:9080, which covers the egress one's 127.0.0.1:9080.
    refused(
        SC,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  captureMode: NONE\n  defaultEndpoint: 127.0.0.1:8080\negress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  captureMode: NONE\n  hosts: ['./*']\n",
        "spec.egress[0].port.number",
        "already bound by the listener spec.ingress[0]",
    );
}

#[test]
fn sidecar_pools_capture_and_egress_proxy() {
    accepted(SC, "inboundConnectionPool:\n  tcp: {maxConnections: 100}\n");
    refused(
        SC,
        "inboundConnectionPool:\n  http: {maxRetries: -1}\n",
        "spec.inboundConnectionPool.http.maxRetries",
        "must be non-negative",
    );
    refused(
        SC,
        "egress:\n- port: {number: 80, protocol: HTTP, name: http}\n  captureMode: SOMETIMES\n  hosts: ['./*']\n",
        "spec.egress[0].captureMode",
        "invalid captureMode SOMETIMES",
    );
    accepted(
        SC,
        "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n  egressProxy: {host: proxy.example.com, port: {number: 3128}}\n",
    );
    refused(
        SC,
        "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n  egressProxy: {host: proxy.example.com}\n",
        "spec.outboundTrafficPolicy.egressProxy.port",
        "egress_proxy port must be non-nil",
    );
}

// === VirtualService ===

const VS: &str = "VirtualService";

fn with_cors(cors: &str) -> String {
    format!(
        "hosts: [a]\nhttp:\n- route:\n  - destination: {{host: a}}\n  corsPolicy:\n{}",
        cors.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

#[test]
fn virtual_service_cors_policy() {
    accepted(
        VS,
        &with_cors(
            "allowOrigins: [{exact: https://a.example.com}, {regex: 'https://.*\\.example\\.com'}]\nallowMethods: [GET, POST]\nallowHeaders: [x-custom]\nexposeHeaders: ['*']\nmaxAge: 24h\nallowCredentials: true\nunmatchedPreflights: IGNORE\n",
        ),
    );
    refused(
        VS,
        &with_cors("allowMethods: [FETCH]\n"),
        "spec.http[0].corsPolicy.allowMethods[0]",
        "\"FETCH\" is not a supported HTTP method",
    );
    refused(
        VS,
        &with_cors("allowOrigins: [{exact: ''}]\n"),
        "spec.http[0].corsPolicy.allowOrigins[0]",
        "non-empty exact, prefix or regex",
    );
    refused(
        VS,
        &with_cors("maxAge: 1500ms\n"),
        "spec.http[0].corsPolicy.maxAge",
        "seconds precision",
    );
    refused(
        VS,
        &with_cors("allowHeaders: ['bad header']\n"),
        "spec.http[0].corsPolicy.allowHeaders[0]",
        "not a valid header name",
    );
    refused(
        VS,
        &with_cors("allowOrigin: [a]\nallowMethod: [GET]\n"),
        "spec.http[0].corsPolicy.allowMethod",
        "unknown field `allowMethod`",
    );
}

// === AuthorizationPolicy ===

const AP: &str = "AuthorizationPolicy";

fn source(fields: &str) -> String {
    format!("rules:\n- from:\n  - source: {{{fields}}}\n")
}

const SOURCE: &str = "spec.rules[0].from[0].source";

#[test]
fn authorization_policy_trust_domains() {
    accepted(
        AP,
        &source("trustDomains: [cluster.local, 'corp-*'], notTrustDomains: ['*.legacy']"),
    );
    refused(
        AP,
        &source("trustDomains: [cluster.local/ns]"),
        "spec.rules[0].from[0].source.trustDomains[0]",
        "must not contain '/'",
    );
    refused(
        AP,
        &source("notTrustDomains: ['a*b']"),
        "spec.rules[0].from[0].source.notTrustDomains[0]",
        "only allowed at the start or end",
    );
    // A source with only trust domains is not empty.
    accepted(AP, &source("notTrustDomains: [other.local]"));
}

#[test]
fn authorization_policy_service_accounts() {
    accepted(AP, &source("serviceAccounts: [ns1/sa, sa2]"));
    refused(
        AP,
        &source("serviceAccounts: [ns1/sa], namespaces: [ns1]"),
        SOURCE,
        "cannot set serviceAccounts with namespaces or principals",
    );
    refused(
        AP,
        &source("notServiceAccounts: [sa], principals: [cluster.local/ns/a/sa/b]"),
        SOURCE,
        "cannot set serviceAccounts with namespaces or principals",
    );
    // In separate sources they may be combined.
    accepted(
        AP,
        "rules:\n- from:\n  - source: {serviceAccounts: [ns1/sa]}\n  - source: {namespaces: [ns1]}\n",
    );
    refused(
        AP,
        &source("serviceAccounts: [a/b/c]"),
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "expected format 'serviceAccount' or 'namespace/serviceAccount'",
    );
    refused(
        AP,
        &source("serviceAccounts: [/sa]"),
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "expected format",
    );
    let many: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
    refused(
        AP,
        &source(&format!("serviceAccounts: [{}]", many.join(", "))),
        "spec.rules[0].from[0].source.serviceAccounts",
        "may not have more than 16 values",
    );
}

#[test]
fn authorization_policy_condition_keys() {
    accepted(
        AP,
        "rules:\n- when:\n  - {key: source.serviceAccount, values: [ns/sa]}\n  - {key: source.trustDomain, values: ['corp-*']}\n",
    );
    refused(
        AP,
        "rules:\n- when:\n  - {key: source.serviceAccount, values: ['ns/*']}\n",
        "spec.rules[0].when[0].values",
        "wildcard not allowed",
    );
    refused(
        AP,
        "rules:\n- when:\n  - {key: source.trustDomain, notValues: ['a*b*']}\n",
        "spec.rules[0].when[0].notValues",
        "at most one wildcard",
    );
}

#[test]
fn authorization_policy_custom_action_identities() {
    refused(
        AP,
        "action: CUSTOM\nprovider: {name: ext}\nrules:\n- from:\n  - source: {trustDomains: [cluster.local]}\n",
        "spec.rules[0].from[0].source.trustDomains",
        "From.TrustDomains is currently not supported with CUSTOM action",
    );
    refused(
        AP,
        "action: CUSTOM\nprovider: {name: ext}\nrules:\n- from:\n  - source: {serviceAccounts: [sa]}\n",
        "spec.rules[0].from[0].source.serviceAccounts",
        "From.ServiceAccounts is currently not supported with CUSTOM action",
    );
    refused(
        AP,
        "action: CUSTOM\nprovider: {name: ext}\nrules:\n- when:\n  - {key: source.serviceAccount, values: [sa]}\n",
        "spec.rules[0].when[0].key",
        "source.serviceAccount is currently not supported with CUSTOM action",
    );
}

#[test]
fn authorization_policy_path_templates() {
    accepted(
        AP,
        "rules:\n- to:\n  - operation: {paths: ['/api/{*}/items', '/static/{**}', '/exact', '/prefix/*']}\n",
    );
    refused(
        AP,
        "rules:\n- to:\n  - operation: {paths: ['/api/{id}']}\n",
        "spec.rules[0].to[0].operation.paths[0]",
        "beyond a supported path template",
    );
    refused(
        AP,
        "rules:\n- to:\n  - operation: {notPaths: ['/{**}/a/{*}']}\n",
        "spec.rules[0].to[0].operation.notPaths[0]",
        "{**} is not the last operator",
    );
    refused(
        AP,
        "rules:\n- to:\n  - operation: {paths: ['/a b/{*}']}\n",
        "spec.rules[0].to[0].operation.paths[0]",
        "with invalid string literal",
    );
}

#[test]
fn authorization_policy_target_ref_gateway_class() {
    accepted(
        AP,
        "targetRef: {group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}\nrules: [{}]\n",
    );
    refused(
        AP,
        "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}\nrules: [{}]\n",
        "spec.targetRef.kind",
        "but was gateway.networking.k8s.io/HTTPRoute",
    );
}
