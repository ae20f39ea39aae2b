//! Bytes written by hand, field by field, with the field numbers and types of Istio's own
//! protos (istio/api: networking/v1alpha3/virtual_service.proto, destination_rule.proto,
//! security/v1beta1/peer_authentication.proto, authorization_policy.proto,
//! request_authentication.proto,
//! mesh/v1alpha1/config.proto, mcp/v1alpha1/resource.proto and metadata.proto), not with this
//! crate's schema: a wrong field number, type or JSON name in the schema shows here.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_xds::{decode_resource, encode_resource, Any, McpObject, MCP_RESOURCE_TYPE_URL};

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn key(field: u32, wire_type: u32) -> Vec<u8> {
    varint(u64::from(field << 3 | wire_type))
}

/// A varint field (int32, uint32, uint64, bool, enum).
fn int(field: u32, v: u64) -> Vec<u8> {
    let mut out = key(field, 0);
    out.extend(varint(v));
    out
}

/// A length-delimited field (string, bytes, message).
fn msg(field: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = key(field, 2);
    out.extend(varint(body.len() as u64));
    out.extend(body);
    out
}

fn string(field: u32, s: &str) -> Vec<u8> {
    msg(field, &[s.as_bytes().to_vec()])
}

fn double(field: u32, v: f64) -> Vec<u8> {
    let mut out = key(field, 1);
    out.extend(v.to_le_bytes());
    out
}

/// `google.protobuf.Duration { seconds = 1; nanos = 2; }`
fn duration(field: u32, seconds: u64, nanos: u64) -> Vec<u8> {
    let mut parts = vec![int(1, seconds)];
    if nanos != 0 {
        parts.push(int(2, nanos));
    }
    msg(field, &parts)
}

/// A `map<string, string>` entry: `key = 1; value = 2;`.
fn entry(field: u32, k: &str, v: &str) -> Vec<u8> {
    msg(field, &[string(1, k), string(2, v)])
}

/// The MCP envelope: `Resource { Metadata metadata = 1; google.protobuf.Any body = 2; }`,
/// `Metadata { name = 1; create_time = 2; version = 3; labels = 4; annotations = 5; }`,
/// `Any { type_url = 1; value = 2; }`.
fn envelope(
    name: &str,
    version: &str,
    labels: &[(&str, &str)],
    body_type: &str,
    body: Vec<u8>,
) -> Any {
    let mut metadata = vec![string(1, name), string(3, version)];
    metadata.extend(labels.iter().map(|(k, v)| entry(4, k, v)));
    let resource = [
        msg(1, &metadata),
        msg(2, &[string(1, body_type), msg(2, &[body])]),
    ]
    .concat();
    Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: resource,
    }
}

fn object(name: &str, version: &str, labels: &[(&str, &str)], spec: Value) -> McpObject {
    McpObject {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: BTreeMap::new(),
        version: version.to_string(),
        spec,
    }
}

/// The hand-written bytes decode to `spec`, and `spec` encodes to exactly those bytes.
fn both_ways(type_url: &str, body_type: &str, body: Vec<u8>, spec: Value) {
    let any = envelope("bookinfo/x", "7", &[("app", "x")], body_type, body);
    let decoded = decode_resource(type_url, &any).unwrap();
    assert_eq!(
        decoded,
        object("bookinfo/x", "7", &[("app", "x")], spec.clone())
    );
    let encoded = encode_resource(type_url, &decoded).unwrap();
    assert_eq!(encoded.type_url, any.type_url);
    assert_eq!(encoded.value, any.value, "{type_url}: encoded bytes differ");
}

#[test]
fn virtual_service_from_known_bytes() {
    // VirtualService { hosts = 1; http = 3; export_to = 6; }
    // HTTPRoute { route = 2; timeout = 6; retries = 7; mirror_percentage = 19; }
    // HTTPRouteDestination { destination = 1; weight = 2; }
    // Destination { host = 1; subset = 2; port = 3; }  PortSelector { number = 1; }
    // HTTPRetry { attempts = 1; retry_remote_localities = 4 (BoolValue); }  Percent { value = 1 (double); }
    let destination = msg(
        1,
        &[
            string(1, "reviews"),
            string(2, "v1"),
            msg(3, &[int(1, 9080)]),
        ],
    );
    let route = msg(
        3,
        &[
            msg(2, &[destination, int(2, 90)]),
            duration(6, 1, 500_000_000),
            // BoolValue(false): present, with its value at the default, so empty.
            msg(7, &[int(1, 3), msg(4, &[])]),
            msg(19, &[double(1, 12.5)]),
        ],
    );
    let body = [string(1, "reviews"), route, string(6, ".")].concat();
    both_ways(
        "networking.istio.io/v1/VirtualService",
        "type.googleapis.com/istio.networking.v1alpha3.VirtualService",
        body,
        json!({
            "hosts": ["reviews"],
            "http": [{
                "route": [{"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 90}],
                "timeout": "1.500s",
                "retries": {"attempts": 3, "retryRemoteLocalities": false},
                "mirrorPercentage": {"value": 12.5}
            }],
            "exportTo": ["."]
        }),
    );
}

#[test]
fn destination_rule_from_known_bytes() {
    // DestinationRule { host = 1; traffic_policy = 2; }
    // TrafficPolicy { load_balancer = 1; outlier_detection = 3; tls = 4; }
    // LoadBalancerSettings { consistent_hash = 2; }
    // ConsistentHashLB { http_header_name = 1; ring_hash = 6; }  RingHash { uint64 minimum_ring_size = 1; }
    // OutlierDetection { base_ejection_time = 3; consecutive_5xx_errors = 7 (UInt32Value); }
    // ClientTLSSettings { mode = 1 (ISTIO_MUTUAL = 3); sni = 6; }
    let policy = msg(
        2,
        &[
            msg(
                1,
                &[msg(2, &[string(1, "x-user"), msg(6, &[int(1, 1 << 32)])])],
            ),
            msg(3, &[duration(3, 30, 0), msg(7, &[int(1, 5)])]),
            msg(4, &[int(1, 3), string(6, "r.example.com")]),
        ],
    );
    both_ways(
        "networking.istio.io/v1/DestinationRule",
        "type.googleapis.com/istio.networking.v1alpha3.DestinationRule",
        [string(1, "r"), policy].concat(),
        json!({
            "host": "r",
            "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 4_294_967_296u64}}},
                "outlierDetection": {"baseEjectionTime": "30s", "consecutive5xxErrors": 5},
                "tls": {"mode": "ISTIO_MUTUAL", "sni": "r.example.com"}
            }
        }),
    );
}

#[test]
fn security_policies_from_known_bytes() {
    // PeerAuthentication { selector = 1; mtls = 2; map<uint32, MutualTLS> port_level_mtls = 3; }
    // WorkloadSelector { map<string, string> match_labels = 1; }  MutualTLS { mode = 1; }
    // Mode: UNSET = 0, DISABLE = 1, PERMISSIVE = 2, STRICT = 3.
    let body = [
        msg(1, &[entry(1, "app", "r")]),
        msg(2, &[int(1, 3)]),
        msg(3, &[int(1, 8080), msg(2, &[int(1, 1)])]),
    ]
    .concat();
    both_ways(
        "security.istio.io/v1/PeerAuthentication",
        "type.googleapis.com/istio.security.v1beta1.PeerAuthentication",
        body,
        json!({
            "selector": {"matchLabels": {"app": "r"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}}
        }),
    );

    // AuthorizationPolicy { rules = 2; action = 3 (DENY = 1); targetRef = 5; }
    // Rule { from = 1; to = 2; when = 3; }  Rule.From { source = 1; }  Rule.To { operation = 1; }
    // Source { principals = 1; not_namespaces = 7; }  Operation { ports = 2; not_paths = 8; }
    // Condition { key = 1; values = 2; }
    // PolicyTargetReference { group = 1; kind = 2; name = 3; namespace = 4; }
    let rule = msg(
        2,
        &[
            msg(
                1,
                &[msg(
                    1,
                    &[
                        string(1, "cluster.local/ns/a/sa/b"),
                        string(7, "kube-system"),
                    ],
                )],
            ),
            msg(2, &[msg(1, &[string(2, "8080"), string(8, "/admin*")])]),
            msg(3, &[string(1, "request.headers[x-a]"), string(2, "b")]),
        ],
    );
    let target = msg(5, &[string(2, "Service"), string(3, "reviews")]);
    both_ways(
        "security.istio.io/v1/AuthorizationPolicy",
        "type.googleapis.com/istio.security.v1beta1.AuthorizationPolicy",
        [rule, int(3, 1), target].concat(),
        json!({
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"], "notNamespaces": ["kube-system"]}}],
                "to": [{"operation": {"ports": ["8080"], "notPaths": ["/admin*"]}}],
                "when": [{"key": "request.headers[x-a]", "values": ["b"]}]
            }],
            "action": "DENY",
            "targetRef": {"kind": "Service", "name": "reviews"}
        }),
    );

    // RequestAuthentication { selector = 1; jwt_rules = 2; }  JWTRule { issuer = 1;
    // audiences = 2; jwks_uri = 3; from_headers = 6; from_params = 7;
    // output_payload_to_header = 8; forward_original_token = 9; jwks = 10;
    // output_claim_to_headers = 11; from_cookies = 12; timeout = 13;
    // space_delimited_claims = 14; }  JWTHeader { name = 1; prefix = 2; }
    // ClaimToHeader { header = 1; claim = 2; }
    let rule = msg(
        2,
        &[
            string(1, "https://issuer.example"),
            string(2, "web"),
            string(3, "https://issuer.example/keys"),
            msg(6, &[string(1, "x-jwt"), string(2, "Bearer ")]),
            string(7, "token"),
            string(8, "x-payload"),
            int(9, 1),
            msg(11, &[string(1, "x-sub"), string(2, "sub")]),
            string(12, "session"),
            duration(13, 2, 0),
            string(14, "roles"),
        ],
    );
    let inline = msg(2, &[string(1, "other"), string(10, "{\"keys\": []}")]);
    both_ways(
        "security.istio.io/v1/RequestAuthentication",
        "type.googleapis.com/istio.security.v1beta1.RequestAuthentication",
        [msg(1, &[entry(1, "app", "r")]), rule, inline].concat(),
        json!({
            "selector": {"matchLabels": {"app": "r"}},
            "jwtRules": [{
                "issuer": "https://issuer.example",
                "audiences": ["web"],
                "jwksUri": "https://issuer.example/keys",
                "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                "fromParams": ["token"],
                "outputPayloadToHeader": "x-payload",
                "forwardOriginalToken": true,
                "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                "fromCookies": ["session"],
                "timeout": "2s",
                "spaceDelimitedClaims": ["roles"]
            }, {
                "issuer": "other",
                "jwks": "{\"keys\": []}"
            }]
        }),
    );
}

#[test]
fn service_entry_and_sidecar_from_known_bytes() {
    // ServiceEntry { hosts = 1; ports = 3; location = 4 (MESH_INTERNAL = 1); resolution = 5
    // (DNS = 2); endpoints = 6; }  ServicePort { number = 1; protocol = 2; name = 3; }
    // WorkloadEntry { address = 1; map<string, uint32> ports = 2; weight = 6; }
    let endpoint = msg(
        6,
        &[
            string(1, "10.0.0.1"),
            msg(2, &[string(1, "http"), int(2, 8080)]),
            int(6, 2),
        ],
    );
    both_ways(
        "networking.istio.io/v1/ServiceEntry",
        "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry",
        [
            string(1, "a.example.com"),
            msg(3, &[int(1, 80), string(2, "HTTP"), string(3, "http")]),
            int(4, 1),
            int(5, 2),
            endpoint,
        ]
        .concat(),
        json!({
            "hosts": ["a.example.com"],
            "ports": [{"number": 80, "protocol": "HTTP", "name": "http"}],
            "location": "MESH_INTERNAL",
            "resolution": "DNS",
            "endpoints": [{"address": "10.0.0.1", "ports": {"http": 8080}, "weight": 2}]
        }),
    );

    // Sidecar { egress = 3; outbound_traffic_policy = 4; }  IstioEgressListener { hosts = 4; }
    // OutboundTrafficPolicy { mode = 1 (REGISTRY_ONLY = 0); } — present but empty on the wire.
    let any = envelope(
        "bookinfo/x",
        "7",
        &[("app", "x")],
        "type.googleapis.com/istio.networking.v1alpha3.Sidecar",
        [msg(3, &[string(4, "./*")]), msg(4, &[])].concat(),
    );
    let decoded = decode_resource("networking.istio.io/v1alpha3/Sidecar", &any).unwrap();
    assert_eq!(
        decoded.spec,
        json!({"egress": [{"hosts": ["./*"], "captureMode": "DEFAULT"}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    );
    // Written back, the zero values are not on the wire: the same bytes.
    assert_eq!(
        encode_resource("networking.istio.io/v1/Sidecar", &decoded).unwrap(),
        any
    );
}

#[test]
fn mesh_config_from_known_bytes() {
    // MeshConfig { connect_timeout = 6; access_log_file = 13; outbound_traffic_policy = 17;
    // access_log_encoding = 27 (JSON = 1); enable_auto_mtls = 43 (BoolValue); }
    // OutboundTrafficPolicy { mode = 1 (ALLOW_ANY = 1); }. Sent bare, as istiod does.
    let bytes = [
        duration(6, 10, 0),
        string(13, "/dev/stdout"),
        msg(17, &[int(1, 1)]),
        int(27, 1),
        msg(43, &[int(1, 1)]),
    ]
    .concat();
    let any = Any {
        type_url: "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig".to_string(),
        value: bytes,
    };
    let decoded = decode_resource("core/v1alpha1/MeshConfig", &any).unwrap();
    assert_eq!(
        decoded.spec,
        json!({
            "connectTimeout": "10s",
            "ingressControllerMode": "UNSPECIFIED",
            "accessLogFile": "/dev/stdout",
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
            "accessLogEncoding": "JSON",
            "enableAutoMtls": true
        })
    );
    assert_eq!(decoded.name, "");
    assert_eq!(
        encode_resource("core/v1alpha1/MeshConfig", &decoded).unwrap(),
        any
    );
}

#[test]
fn struct_bodies_from_known_bytes() {
    // google.protobuf.Struct { map<string, Value> fields = 1; }
    // Value { number_value = 2 (double); string_value = 3; list_value = 6; }  ListValue { values = 1; }
    let fields = [
        msg(1, &[string(1, "port"), msg(2, &[double(2, 80.0)])]),
        msg(1, &[string(1, "ratio"), msg(2, &[double(2, 0.5)])]),
        msg(
            1,
            &[
                string(1, "tags"),
                msg(2, &[msg(6, &[msg(1, &[string(3, "a")])])]),
            ],
        ),
    ]
    .concat();
    let any = envelope(
        "default/svc",
        "",
        &[],
        "type.googleapis.com/google.protobuf.Struct",
        fields,
    );
    let decoded = decode_resource("core/v1/Service", &any).unwrap();
    assert_eq!(
        decoded.spec,
        json!({"port": 80, "ratio": 0.5, "tags": ["a"]})
    );
}
