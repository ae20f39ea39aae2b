//! Zipkin JSON v2 (`POST /api/v2/spans`, a JSON array of spans), as Envoy's Zipkin tracer
//! writes it with `collector_endpoint_version: HTTP_JSON` and `shared_span_context: false`.

use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{trace_id_hex, FinishedSpan, SpanKind};

/// The JSON body for `spans`, reported by the service `service_name` (`localEndpoint`).
pub fn encode(spans: &[FinishedSpan], service_name: &str, local_ip: Option<IpAddr>) -> Bytes {
    let mut local = Map::new();
    local.insert("serviceName".into(), Value::from(service_name));
    match local_ip {
        Some(IpAddr::V4(ip)) => {
            local.insert("ipv4".into(), Value::from(ip.to_string()));
        }
        Some(IpAddr::V6(ip)) => {
            local.insert("ipv6".into(), Value::from(ip.to_string()));
        }
        None => {}
    }
    let local = Value::Object(local);
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let micros = |d: std::time::Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
            let timestamp = micros(s.start.duration_since(UNIX_EPOCH).unwrap_or_default());
            let tags: Map<String, Value> = s
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
                .collect();
            let mut span = json!({
                "traceId": trace_id_hex(s.trace_id, s.trace_id_64),
                "id": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": match s.kind {
                    SpanKind::Client => "CLIENT",
                    SpanKind::Server => "SERVER",
                },
                "timestamp": timestamp,
                // Zipkin drops a zero duration; Envoy reports at least 1 µs.
                "duration": micros(s.duration).max(1),
                "localEndpoint": local,
                "tags": tags,
            });
            if let (Some(parent), Some(obj)) = (s.parent_id, span.as_object_mut()) {
                obj.insert("parentId".into(), Value::from(format!("{parent:016x}")));
            }
            span
        })
        .collect();
    Bytes::from(serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn spans_are_zipkin_v2_json() {
        let span = FinishedSpan {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            trace_id_64: false,
            span_id: 0xb7ad6b7169203331,
            parent_id: Some(1),
            name: "httpbin.default.svc.cluster.local:8000/*".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
            duration: Duration::from_micros(2500),
            tags: vec![("http.method".into(), "GET".into())],
        };
        let body = encode(&[span], "sleep.default", Some("10.0.0.7".parse().unwrap()));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!([{
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "id": "b7ad6b7169203331",
                "parentId": "0000000000000001",
                "name": "httpbin.default.svc.cluster.local:8000/*",
                "kind": "CLIENT",
                "timestamp": 1_700_000_000_000_123u64,
                "duration": 2500,
                "localEndpoint": {"serviceName": "sleep.default", "ipv4": "10.0.0.7"},
                "tags": {"http.method": "GET"}
            }])
        );
        let root = FinishedSpan {
            trace_id: 5,
            trace_id_64: true,
            span_id: 6,
            parent_id: None,
            name: "x".into(),
            kind: SpanKind::Server,
            start: SystemTime::now(),
            duration: Duration::ZERO,
            tags: vec![],
        };
        let v: Value = serde_json::from_slice(&encode(&[root], "s", None)).unwrap();
        assert_eq!(v[0]["traceId"], "0000000000000005");
        assert!(v[0].get("parentId").is_none());
        assert_eq!(v[0]["duration"], 1);
    }
}
