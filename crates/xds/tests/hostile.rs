//! Hostile and broken input on the wire: every failure is a `WireError` that names the
//! collection, the resource when it has a name, and the field when it is about one, and
//! nothing panics.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_xds::pb::istio::mcp::v1alpha1::{Metadata, Resource};
use sluice_xds::prost::Message;
use sluice_xds::{
    decode_resource, encode_resource, Any, McpObject, WireError, MCP_RESOURCE_TYPE_URL,
};

const VS: &str = "networking.istio.io/v1/VirtualService";
const SE: &str = "networking.istio.io/v1/ServiceEntry";
const VS_BODY: &str = "type.googleapis.com/istio.networking.v1alpha3.VirtualService";

fn object(name: &str, spec: Value) -> McpObject {
    McpObject {
        name: name.to_string(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        version: String::new(),
        spec,
    }
}

/// An MCP resource named `name` whose body is `body_type` with `body` bytes.
fn mcp(name: &str, body_type: &str, body: Vec<u8>) -> Any {
    let resource = Resource {
        metadata: Some(Metadata {
            name: name.to_string(),
            ..Metadata::default()
        }),
        body: Some(sluice_xds::pbjson_types::Any {
            type_url: body_type.to_string(),
            value: body.into(),
        }),
    };
    Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: resource.encode_to_vec(),
    }
}

fn valid_vs() -> Value {
    json!({
        "hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": "5s"}]
    })
}

/// A field error's resource name, path and message.
fn field_error(e: &WireError) -> (&str, &str, &str) {
    match e {
        WireError::Field {
            name,
            path,
            message,
            ..
        } => (name, path, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn garbage_outer_bytes_are_a_malformed_resource() {
    let any = Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    };
    let e = decode_resource(VS, &any).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::Malformed {
                what: "the resource",
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(VS) && text.contains("istio.mcp.v1alpha1.Resource"),
        "{text}"
    );
}

#[test]
fn garbage_body_bytes_name_the_resource() {
    // Field 1 (hosts, a string) with a length running past the end.
    let any = mcp("default/reviews", VS_BODY, vec![0x0a, 0x7f, b'x']);
    let e = decode_resource(VS, &any).unwrap_err();
    assert_eq!(e.resource_name(), Some("default/reviews"));
    let text = e.to_string();
    assert!(
        text.contains("default/reviews")
            && text.contains("the body")
            && text.contains("istio.networking.v1alpha3.VirtualService"),
        "{text}"
    );
}

#[test]
fn wrong_body_type_url_is_refused() {
    let se_body = "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry";
    let any = mcp("default/reviews", se_body, Vec::new());
    let e = decode_resource(VS, &any).unwrap_err();
    assert_eq!(
        e,
        WireError::BodyType {
            type_url: VS.to_string(),
            name: "default/reviews".to_string(),
            expected: VS_BODY.to_string(),
            got: se_body.to_string(),
        }
    );
    assert!(e.to_string().contains("default/reviews"));
    // Another prefix before the last `/` names the same message: accepted.
    let any = mcp(
        "default/reviews",
        "example.com/x/istio.networking.v1alpha3.VirtualService",
        Vec::new(),
    );
    assert_eq!(decode_resource(VS, &any).unwrap().spec, json!({}));
}

#[test]
fn wrong_outer_type_url_is_refused() {
    // The bare Istio message, as if MCP's envelope were left out.
    let good = encode_resource(VS, &object("default/reviews", valid_vs())).unwrap();
    let any = Any {
        type_url: VS_BODY.to_string(),
        value: good.value.clone(),
    };
    let e = decode_resource(VS, &any).unwrap_err();
    assert!(matches!(e, WireError::OuterType { .. }), "{e:?}");
    assert!(e.to_string().contains("istio.mcp.v1alpha1.Resource"), "{e}");
    // The MCP envelope where istiod sends MeshConfig bare is accepted; anything else is not.
    let any = Any {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_string(),
        value: Vec::new(),
    };
    let e = decode_resource("core/v1alpha1/MeshConfig", &any).unwrap_err();
    assert!(
        e.to_string().contains("istio.mesh.v1alpha1.MeshConfig"),
        "{e}"
    );
}

#[test]
fn missing_metadata_or_body_is_refused() {
    let no_metadata = Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: Resource::default().encode_to_vec(),
    };
    assert!(matches!(
        decode_resource(VS, &no_metadata).unwrap_err(),
        WireError::NoMetadata { .. }
    ));
    let no_body = Resource {
        metadata: Some(Metadata {
            name: "default/reviews".to_string(),
            ..Metadata::default()
        }),
        body: None,
    };
    let no_body = Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: no_body.encode_to_vec(),
    };
    let e = decode_resource(VS, &no_body).unwrap_err();
    assert_eq!(e.resource_name(), Some("default/reviews"));
}

#[test]
fn unknown_fields_in_the_spec_are_refused_with_their_path() {
    let mut spec = valid_vs();
    spec["http"][0]["retries"] = json!({"attempts": 3, "perTryTimout": "1s"});
    let e = encode_resource(VS, &object("default/reviews", spec)).unwrap_err();
    let (name, path, message) = field_error(&e);
    assert_eq!(name, "default/reviews");
    assert_eq!(path, "spec.http[0].retries.perTryTimout");
    assert!(
        message.contains("unknown field `perTryTimout`") && message.contains("HTTPRetry"),
        "{message}"
    );
    assert_eq!(
        e.to_string(),
        format!("VirtualService default/reviews: spec.http[0].retries.perTryTimout: {message}")
    );
    // In a map of messages, and in a list.
    let spec = json!({"hosts": ["r"], "http": [{"match": [{"headers": {"x": {"exakt": "1"}}}]}]});
    let e = encode_resource(VS, &object("default/r", spec)).unwrap_err();
    assert_eq!(field_error(&e).1, "spec.http[0].match[0].headers.x.exakt");
}

#[test]
fn wrong_types_and_values_are_refused_with_their_path() {
    let cases = [
        (json!({"http": [{"timeout": 5}]}), "spec.http[0].timeout"),
        (
            json!({"http": [{"timeout": "five seconds"}]}),
            "spec.http[0].timeout",
        ),
        (json!({"hosts": "reviews"}), "spec.hosts"),
        (
            json!({"http": [{"route": [{"weight": 3_000_000_000u64}]}]}),
            "spec.http[0].route[0].weight",
        ),
        (
            json!({"http": [{"route": [{"destination": {"port": {"number": -1}}}]}]}),
            "spec.http[0].route[0].destination.port.number",
        ),
        (
            json!({"http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}]}),
            "spec.http[0].match[0].uri",
        ),
        (
            json!({"http": [{"directResponse": {"status": 200, "body": {"bytes": "not base64!"}}}]}),
            "spec.http[0].directResponse.body.bytes",
        ),
        (json!({"http": "nope"}), "spec.http"),
        (json!([1, 2]), "spec"),
    ];
    for (spec, expected_path) in cases {
        let e = encode_resource(VS, &object("default/reviews", spec.clone())).unwrap_err();
        let (name, path, message) = field_error(&e);
        assert_eq!(name, "default/reviews");
        assert!(path.starts_with(expected_path), "{spec}: {path}: {message}");
        assert!(!message.is_empty());
    }
    let e = encode_resource(
        "networking.istio.io/v1/DestinationRule",
        &object(
            "default/r",
            json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLEX"}}}),
        ),
    )
    .unwrap_err();
    let (_, path, message) = field_error(&e);
    assert_eq!(path, "spec.trafficPolicy.tls.mode");
    assert!(message.contains("SIMPLEX"), "{message}");
}

#[test]
fn nulls_are_absent_fields() {
    let spec = json!({
        "hosts": ["r"],
        "gateways": null,
        "http": [{"timeout": null, "route": [{"destination": {"host": "r", "subset": null}, "weight": null}]}],
    });
    let any = encode_resource(VS, &object("default/r", spec)).unwrap();
    let back = decode_resource(VS, &any).unwrap();
    assert_eq!(
        back.spec,
        json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]})
    );
}

/// A field a newer Istio would send and this schema lacks: refused, not silently dropped, for
/// Istio's kinds; skipped for MeshConfig, whose reader takes only what it knows.
#[test]
fn unknown_wire_fields_are_refused_except_in_mesh_config() {
    let good = encode_resource(VS, &object("default/reviews", valid_vs())).unwrap();
    let resource = Resource::decode(good.value.as_slice()).unwrap();
    let body = resource.body.unwrap();
    // http[0] gets field 99 (varint 1) appended inside it.
    let mut vs =
        sluice_xds::pb::istio::networking::v1alpha3::VirtualService::decode(body.value.as_ref())
            .unwrap();
    let route = vs.http.remove(0).encode_to_vec();
    let mut with_extra = route.clone();
    with_extra.extend_from_slice(&[0x98, 0x06, 0x01]); // tag 99, varint
    let mut bytes = vs.encode_to_vec();
    bytes.push(0x1a); // field 3 (http), length-delimited
    bytes.push(u8::try_from(with_extra.len()).unwrap());
    bytes.extend_from_slice(&with_extra);
    let e = decode_resource(VS, &mcp("default/reviews", VS_BODY, bytes)).unwrap_err();
    let (name, path, message) = field_error(&e);
    assert_eq!(name, "default/reviews");
    assert_eq!(path, "spec.http[0]");
    assert!(
        message.contains("field number 99 of istio.networking.v1alpha3.HTTPRoute"),
        "{message}"
    );

    // An enum number past the schema's: ServiceEntry.resolution (5) = 42.
    let bytes = vec![0x0a, 0x01, b'a', 0x28, 42];
    let se_body = "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry";
    let e = decode_resource(SE, &mcp("default/a", se_body, bytes)).unwrap_err();
    let (_, path, message) = field_error(&e);
    assert_eq!(path, "spec.resolution");
    assert!(
        message.contains("42") && message.contains("Resolution"),
        "{message}"
    );

    // MeshConfig: field 200 (unknown here: one of istiod's dozens) is skipped.
    let mut mesh = vec![0x6a, 0x0b]; // access_log_file (13) = "/dev/stdout"
    mesh.extend_from_slice(b"/dev/stdout");
    mesh.extend_from_slice(&[0xc0, 0x0c, 0x01]); // tag 200, varint 1
    let any = Any {
        type_url: "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig".to_string(),
        value: mesh,
    };
    let back = decode_resource("core/v1alpha1/MeshConfig", &any).unwrap();
    assert_eq!(back.spec["accessLogFile"], json!("/dev/stdout"));
    // An unknown enum number is refused even there: a mode sluice cannot read is not ALLOW_ANY.
    let any = Any {
        type_url: "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig".to_string(),
        value: vec![0x8a, 0x01, 0x02, 0x08, 0x07], // outbound_traffic_policy (17) { mode = 7 }
    };
    let e = decode_resource("core/v1alpha1/MeshConfig", &any).unwrap_err();
    assert_eq!(field_error(&e).1, "spec.outboundTrafficPolicy.mode");
}

#[test]
fn struct_bodies_must_be_objects() {
    let e = encode_resource("core/v1/Service", &object("default/r", json!("text"))).unwrap_err();
    let (_, path, message) = field_error(&e);
    assert_eq!(path, "spec");
    assert!(message.contains("Struct"), "{message}");
    assert!(e.to_string().starts_with("Service default/r: spec:"), "{e}");
    // A Struct nested past prost's recursion limit is a decode error, not a stack overflow.
    let any = mcp(
        "default/deep",
        "type.googleapis.com/google.protobuf.Struct",
        deep_struct(1000),
    );
    let e = decode_resource("core/v1/Service", &any).unwrap_err();
    assert!(matches!(e, WireError::Malformed { .. }), "{e:?}");
}

/// A length-delimited field.
fn field(number: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![number << 3 | 2];
    let mut len = body.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(body);
    out
}

/// `{"a": {"a": … {}}}` as a `google.protobuf.Struct`, `depth` levels deep.
fn deep_struct(depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        // Struct.fields (1) entry { key (1): "a", value (2): Value { struct_value (5): inner } }
        let mut entry = field(1, b"a");
        entry.extend(field(2, &field(5, &inner)));
        inner = field(1, &entry);
    }
    inner
}

/// Random damage to valid resources: truncations, bit flips and garbage never panic.
#[test]
fn damaged_bytes_never_panic() {
    let spec: Value = json!({
        "hosts": ["reviews", "*.example.com"],
        "http": [{
            "match": [{"uri": {"prefix": "/a"}, "headers": {"x": {"exact": "y"}}}],
            "route": [{"destination": {"host": "r", "subset": "v1", "port": {"number": 80}}, "weight": 50}],
            "retries": {"attempts": 3, "perTryTimeout": "1s", "retryRemoteLocalities": true},
            "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}}}
        }],
        "tls": [{"match": [{"sniHosts": ["a"]}], "route": [{"destination": {"host": "a"}}]}]
    });
    let good = encode_resource(VS, &object("default/reviews", spec)).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut refused) = (0, 0);
    for round in 0..3000 {
        let mut bytes = good.value.clone();
        match round % 3 {
            0 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] ^= 1 << (next() % 8);
                }
            }
            _ => {
                let len = (next() % 64) as usize;
                bytes = (0..len).map(|_| next() as u8).collect();
            }
        }
        let any = Any {
            type_url: good.type_url.clone(),
            value: bytes,
        };
        match decode_resource(VS, &any) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    e.to_string().starts_with(VS) || e.to_string().starts_with("VirtualService"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}
