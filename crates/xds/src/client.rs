//! The ADS client side: one state-of-the-world stream to a control plane (sluice control or
//! istiod), subscribed to a fixed list of collections, that hands each response to the proxy
//! and ACKs or NACKs what the proxy says.
//!
//! A lost control plane changes nothing in traffic: the proxy keeps what it applied, and the
//! client reconnects with exponential backoff and jitter, to the next address in its list (any
//! replica will do), resuming with the versions it holds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt as _;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Endpoint;

use crate::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::discovery::{DiscoveryRequest, DiscoveryResponse};
use crate::{decode_resource, McpObject, Node, RpcStatus};

/// gRPC status code INTERNAL: what Envoy puts in a NACK's `error_detail`.
const INTERNAL: i32 = 13;

/// One collection received, for the proxy to apply.
#[derive(Debug)]
pub struct Received {
    pub type_url: String,
    pub version: String,
    pub objects: Vec<McpObject>,
    /// `Ok` to ACK; `Err(message)` to NACK with `message` (the proxy keeps its last good).
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of each control-plane replica; tried in turn.
    pub servers: Vec<String>,
    pub node: Node,
    /// Collections to subscribe to, in order.
    pub collections: Vec<String>,
    /// First reconnect delay; doubles up to `max_backoff`, with ±50% jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Mutual TLS (istiod's 15012): the proxy's client config, which presents its workload
    /// certificate and verifies the control plane's. `None`: plaintext (15010).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Delta xDS (`DeltaAggregatedResources`): only changed resources travel, and a reconnect
    /// resends only what changed meanwhile.
    pub delta: bool,
}

/// Runs the client until `applier` is dropped: connects, subscribes, forwards responses, and
/// reconnects whenever the stream ends.
pub async fn run(config: ClientConfig, applier: mpsc::Sender<Received>) {
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut backoff = config.initial_backoff;
    let mut attempt = 0usize;
    loop {
        let server = &config.servers[attempt % config.servers.len().max(1)];
        attempt += 1;
        let ended = if config.delta {
            delta_stream_once(server, &config, &mut held, &applier).await
        } else {
            stream_once(server, &config, &mut versions, &applier).await
        };
        match ended {
            Ok(StreamEnd::ApplierGone) => return,
            Ok(StreamEnd::Closed { received }) => {
                tracing::warn!(server = %server, "control plane closed the stream; reconnecting");
                if received {
                    backoff = config.initial_backoff;
                }
            }
            Err(e) => {
                tracing::warn!(server = %server, "control plane unreachable: {e}; retrying");
            }
        }
        if applier.is_closed() {
            return;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// `d` scaled by a random factor in [0.5, 1.5), so proxies that lost the same control plane do
/// not all come back at once.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

enum StreamEnd {
    ApplierGone,
    Closed { received: bool },
}

/// The requests of a new ADS stream, with one subscription per collection already in them
/// (`subscribe(node, type_url)`; the node goes with the first only), and the sender for the
/// ACKs and NACKs to come.
fn open_requests<R: Send + 'static>(
    config: &ClientConfig,
    mut subscribe: impl FnMut(Option<Node>, &str) -> R,
) -> (mpsc::Sender<R>, mpsc::Receiver<R>) {
    let (tx, rx) = mpsc::channel::<R>(config.collections.len() + 4);
    for (i, type_url) in config.collections.iter().enumerate() {
        let node = (i == 0).then(|| config.node.clone());
        // Room for every subscription was made above; nothing has been received yet.
        let _ = tx.try_send(subscribe(node, type_url));
    }
    (tx, rx)
}

/// A channel's receiving end as a request stream.
fn receiver_stream<R: Send + 'static>(
    rx: mpsc::Receiver<R>,
) -> impl futures_util::Stream<Item = R> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

/// The next response of a stream, or how the stream ended: closed by the control plane, or
/// failed after something was received (both mean reconnect). A failure before anything was
/// received is the connection attempt's error.
async fn next_response<T>(
    responses: &mut tonic::Streaming<T>,
    received: bool,
    server: &str,
) -> Result<Result<T, StreamEnd>, String> {
    match responses.message().await {
        Ok(Some(response)) => Ok(Ok(response)),
        Ok(None) => Ok(Err(StreamEnd::Closed { received })),
        Err(status) if received => {
            tracing::warn!(server = %server, "control-plane stream failed: {status}");
            Ok(Err(StreamEnd::Closed { received }))
        }
        Err(status) => Err(status.message().to_string()),
    }
}

/// A gRPC channel to `server`, over mutual TLS when the config says so.
async fn connect(server: &str, config: &ClientConfig) -> Result<tonic::transport::Channel, String> {
    let endpoint = endpoint(server)?
        .http2_keep_alive_interval(Duration::from_secs(30))
        // A control plane busy pushing to thousands of proxies may answer pings late; a short
        // timeout would drop a healthy stream and add a reconnect to its load.
        .keep_alive_timeout(Duration::from_secs(30));
    match &config.tls {
        None => endpoint.connect().await.map_err(|e| e.to_string()),
        Some(tls) => endpoint
            .connect_with_connector(tls_connector(server, tls.clone()))
            .await
            .map_err(|e| format!("{e}: {}", error_chain(&e))),
    }
}

/// The gRPC endpoint of the control plane at `server` (`HOST:PORT`).
fn endpoint(server: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| format!("bad address {server}: {e}"))?
        .connect_timeout(Duration::from_secs(5)))
}

/// A gRPC channel to `server` over TLS with `tls` (the certificate service).
pub(crate) async fn connect_tls(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, String> {
    endpoint(server)?
        .connect_with_connector(tls_connector(server, tls))
        .await
        .map_err(|e| format!("{server}: {e}: {}", error_chain(&e)))
}

async fn stream_once(
    server: &str,
    config: &ClientConfig,
    versions: &mut BTreeMap<String, String>,
    applier: &mpsc::Sender<Received>,
) -> Result<StreamEnd, String> {
    let channel = connect(server, config).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (tx, requests) = open_requests(config, |node, type_url| DiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        version_info: versions.get(type_url).cloned().unwrap_or_default(),
        ..DiscoveryRequest::default()
    });
    let mut responses = client
        .stream_aggregated_resources(receiver_stream(requests))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    tracing::info!(server = %server, "connected to the control plane");
    let mut received = false;
    // Responses are handed to the proxy as they arrive and answered in order as its verdicts
    // come back, so a connection's first burst (one response per collection) is applied
    // together instead of one compile per collection.
    let mut verdicts: FuturesOrdered<Verdict> = FuturesOrdered::new();
    loop {
        tokio::select! {
            message = next_response(&mut responses, received, server) => {
                let response = match message? {
                    Ok(response) => response,
                    Err(end) => return Ok(end),
                };
                received = true;
                let Some(verdict) = hand_over(response, applier).await else {
                    return Ok(StreamEnd::ApplierGone);
                };
                verdicts.push_back(verdict);
            }
            Some((answered, result)) = verdicts.next(), if !verdicts.is_empty() => {
                let Some(result) = result else {
                    return Ok(StreamEnd::ApplierGone);
                };
                let request = answer(answered, result, versions);
                if tx.send(request).await.is_err() {
                    return Ok(StreamEnd::Closed { received });
                }
            }
        }
    }
}

/// What an ACK or NACK refers to: a response's type URL, version and nonce.
struct Answered {
    type_url: String,
    version: String,
    nonce: String,
}

/// A response on its way through the proxy: what it was, and the proxy's verdict (`None` when
/// the proxy is gone).
type Verdict =
    Pin<Box<dyn Future<Output = (Answered, Option<Result<(), String>>)> + Send + 'static>>;

/// Decodes `response` and hands it to the proxy. A response that does not decode is refused
/// here. `None` when the proxy is gone.
async fn hand_over(
    response: DiscoveryResponse,
    applier: &mpsc::Sender<Received>,
) -> Option<Verdict> {
    let decoded = response_parts(&response);
    let answered = Answered {
        type_url: response.type_url.clone(),
        version: response.version_info.clone(),
        nonce: response.nonce,
    };
    let objects = match decoded {
        Ok(objects) => objects,
        Err(message) => return Some(Box::pin(async move { (answered, Some(Err(message))) })),
    };
    let (reply, verdict) = oneshot::channel();
    let received = Received {
        type_url: response.type_url,
        version: response.version_info,
        objects,
        reply,
    };
    applier.send(received).await.ok()?;
    Some(Box::pin(async move { (answered, verdict.await.ok()) }))
}

/// The ACK (applied) or NACK (refused, with the message) for an answered response; an ACK
/// records the version held, which a NACK reports and a reconnect resumes from.
fn answer(
    answered: Answered,
    result: Result<(), String>,
    versions: &mut BTreeMap<String, String>,
) -> DiscoveryRequest {
    match result {
        Ok(()) => {
            versions.insert(answered.type_url.clone(), answered.version.clone());
            DiscoveryRequest {
                type_url: answered.type_url,
                version_info: answered.version,
                response_nonce: answered.nonce,
                ..DiscoveryRequest::default()
            }
        }
        Err(message) => {
            tracing::warn!(
                type_url = %answered.type_url,
                version = %answered.version,
                "config refused (NACK): {message}"
            );
            DiscoveryRequest {
                version_info: versions
                    .get(&answered.type_url)
                    .cloned()
                    .unwrap_or_default(),
                type_url: answered.type_url,
                response_nonce: answered.nonce,
                error_detail: Some(RpcStatus {
                    code: INTERNAL,
                    message,
                    details: Vec::new(),
                }),
                ..DiscoveryRequest::default()
            }
        }
    }
}

/// A response's collection, decoded; `Err` names the first resource that could not be.
fn response_parts(response: &DiscoveryResponse) -> Result<Vec<McpObject>, String> {
    response
        .resources
        .iter()
        .map(|any| decode_resource(&response.type_url, any).map_err(|e| e.to_string()))
        .collect()
}

/// Connects over TCP to `server` and completes a TLS handshake with `tls` (ALPN h2) before
/// gRPC speaks; the server name is the address's host part.
fn tls_connector(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    let server = server.to_string();
    tower::service_fn(move |_uri: tonic::transport::Uri| {
        let server = server.clone();
        let tls = tls.clone();
        async move {
            let host = server
                .rsplit_once(':')
                .map_or(server.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = tokio::net::TcpStream::connect(&server).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// The causes under a connection error (tonic's top-level message is just "transport error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// A collection as a delta client holds it: name → (version, object).
type Held = BTreeMap<String, (String, McpObject)>;

/// One delta stream: subscribes to every collection (wildcard) with the versions held, applies
/// each response on top of what is held, and ACKs or NACKs it. Responses are handled one at a
/// time: each builds on the last one the proxy accepted.
async fn delta_stream_once(
    server: &str,
    config: &ClientConfig,
    held: &mut BTreeMap<String, Held>,
    applier: &mpsc::Sender<Received>,
) -> Result<StreamEnd, String> {
    use crate::discovery::DeltaDiscoveryRequest;
    let channel = connect(server, config).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (tx, requests) = open_requests(config, |node, type_url| DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        initial_resource_versions: held
            .get(type_url)
            .map(|h| h.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
            .unwrap_or_default(),
        ..DeltaDiscoveryRequest::default()
    });
    let mut responses = client
        .delta_aggregated_resources(receiver_stream(requests))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    tracing::info!(server = %server, "connected to the control plane (delta)");
    let mut received = false;
    loop {
        let response = match next_response(&mut responses, received, server).await? {
            Ok(response) => response,
            Err(end) => return Ok(end),
        };
        received = true;
        let type_url = response.type_url.clone();
        let mut candidate = held.get(&type_url).cloned().unwrap_or_default();
        let mut decoded = Ok(());
        for resource in &response.resources {
            let Some(any) = &resource.resource else {
                decoded = Err(format!(
                    "{type_url}: resource {} has no body",
                    resource.name
                ));
                break;
            };
            match decode_resource(&type_url, any) {
                Ok(object) => {
                    candidate.insert(resource.name.clone(), (resource.version.clone(), object));
                }
                Err(e) => {
                    decoded = Err(e.to_string());
                    break;
                }
            }
        }
        for name in &response.removed_resources {
            candidate.remove(name);
        }
        let result = match decoded {
            Err(message) => Err(message),
            Ok(()) => {
                let (reply, verdict) = oneshot::channel();
                let objects = candidate.values().map(|(_, o)| o.clone()).collect();
                let received = Received {
                    type_url: type_url.clone(),
                    version: response.system_version_info.clone(),
                    objects,
                    reply,
                };
                if applier.send(received).await.is_err() {
                    return Ok(StreamEnd::ApplierGone);
                }
                match verdict.await {
                    Ok(result) => result,
                    Err(_) => return Ok(StreamEnd::ApplierGone),
                }
            }
        };
        let error_detail = match result {
            Ok(()) => {
                held.insert(type_url.clone(), candidate);
                None
            }
            Err(message) => {
                tracing::warn!(
                    type_url = %type_url,
                    version = %response.system_version_info,
                    "config refused (NACK): {message}"
                );
                Some(RpcStatus {
                    code: INTERNAL,
                    message,
                    details: Vec::new(),
                })
            }
        };
        let answer = DeltaDiscoveryRequest {
            type_url,
            response_nonce: response.nonce,
            error_detail,
            ..DeltaDiscoveryRequest::default()
        };
        if tx.send(answer).await.is_err() {
            return Ok(StreamEnd::Closed { received });
        }
    }
}
