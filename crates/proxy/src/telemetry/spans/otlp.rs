//! OpenTelemetry OTLP: spans as `ExportTraceServiceRequest` (the published protos, through the
//! `opentelemetry-proto` crate), sent over gRPC (`TraceService/Export`) or OTLP/HTTP (protobuf
//! body), as Envoy's OpenTelemetry tracer does. Also the plain HTTP client the Zipkin export uses.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use sluice_model::tracing::TracingProvider;

use super::{FinishedSpan, SpanKind};

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// The export request for `spans` of the service `service_name` (resource `service.name`).
pub fn request(spans: &[FinishedSpan], service_name: &str) -> ExportTraceServiceRequest {
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    };
    let spans = spans
        .iter()
        .map(|s| {
            let start = nanos(s.start);
            let error = s.tag("error") == Some("true");
            Span {
                // A 64-bit trace id is the low half of the 128-bit one, as in `traceparent`.
                trace_id: s.trace_id.to_be_bytes().to_vec(),
                span_id: s.span_id.to_be_bytes().to_vec(),
                parent_span_id: s
                    .parent_id
                    .map(|p| p.to_be_bytes().to_vec())
                    .unwrap_or_default(),
                name: s.name.clone(),
                kind: match s.kind {
                    SpanKind::Client => span::SpanKind::Client,
                    SpanKind::Server => span::SpanKind::Server,
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start
                    .saturating_add(s.duration.as_nanos().min(u128::from(u64::MAX)) as u64),
                attributes: s.tags.iter().map(|(k, v)| string_attribute(k, v)).collect(),
                status: Some(Status {
                    code: if error {
                        status::StatusCode::Error
                    } else {
                        status::StatusCode::Unset
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute("service.name", service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "envoy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The OTLP/HTTP protobuf body.
pub fn encode(spans: &[FinishedSpan], service_name: &str) -> Bytes {
    Bytes::from(request(spans, service_name).encode_to_vec())
}

/// Plain HTTP/1.1 POSTs to a collector (Zipkin, OTLP/HTTP), keeping connections between batches.
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpSender {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSender {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpSender {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// POSTs `body` to `addr` with `Host: <provider host>:<port>` and the provider's headers;
    /// any status but 2xx is a failure.
    pub async fn post(
        &self,
        addr: SocketAddr,
        provider: &TracingProvider,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<(), String> {
        let uri = format!("http://{addr}{path}");
        let mut req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(
                http::header::HOST,
                format!("{}:{}", provider.host, provider.port),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        req.headers_mut().extend(super::provider_headers(provider));
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}

/// A gRPC channel to the collector, kept while it stays at the same address.
#[derive(Default)]
pub struct GrpcSender {
    channel: Option<(SocketAddr, TraceServiceClient<tonic::transport::Channel>)>,
}

impl GrpcSender {
    /// `TraceService/Export` with the provider's initial metadata, `:authority` the provider's
    /// host.
    pub async fn export(
        &mut self,
        addr: SocketAddr,
        provider: &TracingProvider,
        request: ExportTraceServiceRequest,
    ) -> Result<(), String> {
        let client = match &self.channel {
            Some((a, client)) if *a == addr => client.clone(),
            _ => {
                let origin: http::Uri = format!("http://{}:{}", provider.host, provider.port)
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| e.to_string())?;
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .origin(origin)
                    .connect_timeout(provider.timeout)
                    .timeout(provider.timeout)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let client = TraceServiceClient::new(channel);
                self.channel = Some((addr, client.clone()));
                client
            }
        };
        let mut req = tonic::Request::new(request);
        for (name, value) in super::provider_headers(provider).iter() {
            if let (Ok(k), Ok(Ok(v))) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                value.to_str().map(tonic::metadata::MetadataValue::try_from),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        let mut client = client;
        match client.export(req).await {
            Ok(_) => Ok(()),
            Err(status) => {
                // A broken channel is rebuilt for the next batch.
                self.channel = None;
                Err(status.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spans_map_to_otlp() {
        let s = FinishedSpan {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            trace_id_64: false,
            span_id: 0xb7ad6b7169203331,
            parent_id: None,
            name: "op".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH + Duration::from_secs(10),
            duration: Duration::from_millis(3),
            tags: vec![("error".into(), "true".into())],
        };
        let r = request(&[s], "cart.shop");
        let rs = &r.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0],
            string_attribute("service.name", "cart.shop")
        );
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&span.span_id), "b7ad6b7169203331");
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            3_000_000
        );
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let decoded = ExportTraceServiceRequest::decode(encode(&[], "x")).unwrap();
        assert!(decoded.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
