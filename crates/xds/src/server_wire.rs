//! The ADS service as tonic serves it, but with responses that are already encoded.
//!
//! tonic's generated server encodes every response message into a per-stream buffer that keeps
//! the capacity of the largest message it ever sent: with 10,000 streams and a 200 KB collection
//! that was 2.7 GB held for nothing, and a copy of every resource per stream per push. Here a
//! response is the bytes the control plane encoded once for every proxy of a scope
//! ([`crate::server_responses`]), followed by this stream's nonce. Protobuf allows it: a message
//! may be written as the concatenation of its fields' encodings, and `nonce` (field 5 of both
//! `DiscoveryResponse` and `DeltaDiscoveryResponse`) is the only field that differs per stream.
//! Those `Bytes` go to h2 as they are, so every stream's response shares one buffer.
//!
//! Requests are decoded with tonic's own decoder (`Streaming`), and the gRPC framing written
//! here is the one documented in "gRPC over HTTP2": a 1-byte compressed flag, a 4-byte
//! big-endian length, the message; `grpc-status` (and `grpc-message`) in the trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::server::NamedService;
use tonic::Status;

use crate::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use crate::server::{AdsServer, StreamPeer};

/// gRPC's full method names for the two ADS streams.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const STATE_OF_THE_WORLD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// How many responses may wait for h2 per stream before the stream's task waits.
const RESPONSES_QUEUED: usize = 16;

/// One response on its way: the shared encoding of everything but the nonce, and the nonce.
pub(crate) struct Outgoing {
    pub(crate) body: Bytes,
    pub(crate) nonce_field: Bytes,
}

/// What a stream's task sends to its response body: a response, or the status that ends it.
pub(crate) type ResponseSender = mpsc::Sender<Result<Outgoing, Status>>;

/// The ADS service for tonic's router: `Server::builder().add_service(ads.service(limit))`.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
    max_request_bytes: usize,
}

impl AdsServer {
    /// This server as a gRPC service; requests larger than `max_request_bytes` end their stream.
    pub fn service(&self, max_request_bytes: usize) -> AdsService {
        AdsService {
            server: self.clone(),
            max_request_bytes,
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let (tx, rx) = mpsc::channel(RESPONSES_QUEUED);
        let peer = StreamPeer::new(&self.server, &parts.extensions);
        let limit = Some(self.max_request_bytes);
        match parts.uri.path() {
            STATE_OF_THE_WORLD => {
                let requests = requests::<DiscoveryRequest>(body, limit);
                tokio::spawn(crate::server::StreamState::new(peer, tx).run(requests));
            }
            DELTA => {
                let requests = requests::<DeltaDiscoveryRequest>(body, limit);
                tokio::spawn(crate::server_delta::DeltaState::new(peer, tx).run(requests));
            }
            other => {
                let status = Status::unimplemented(format!("unknown method {other}"));
                return std::future::ready(Ok(status.into_http()));
            }
        }
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::new(ResponseBody {
                responses: rx,
                queued: [None, None],
                ended: false,
            }))
            .expect("a static header is valid");
        std::future::ready(Ok(response))
    }
}

/// A request body as the stream of messages it carries (uncompressed: the server advertises no
/// compression), each at most `limit` bytes.
fn requests<T: prost::Message + Default + Send + 'static>(
    body: tonic::body::Body,
    limit: Option<usize>,
) -> Streaming<T> {
    Streaming::new_request(tonic_prost::ProstDecoder::default(), body, None, limit)
}

/// A stream's response body: each [`Outgoing`] as a gRPC message (its prefix, the shared body,
/// the nonce: three data frames, none copied), then the trailers.
struct ResponseBody {
    responses: mpsc::Receiver<Result<Outgoing, Status>>,
    /// The rest of the message whose prefix was just yielded.
    queued: [Option<Bytes>; 2],
    ended: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(next) = this.queued.iter_mut().find_map(Option::take) {
            return Poll::Ready(Some(Ok(Frame::data(next))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let status = match this.responses.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(out))) => {
                let len = out.body.len() + out.nonce_field.len();
                let Ok(len) = u32::try_from(len) else {
                    // Never: a collection is far below 4 GiB, and a proxy's limit lower still.
                    this.ended = true;
                    return Poll::Ready(Some(Ok(trailers(&Status::resource_exhausted(
                        "response larger than 4 GiB",
                    )))));
                };
                let mut prefix = [0u8; 5];
                prefix[1..].copy_from_slice(&len.to_be_bytes());
                this.queued = [Some(out.body), Some(out.nonce_field)];
                return Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&prefix)))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        this.ended = true;
        Poll::Ready(Some(Ok(trailers(&status))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.queued.iter().all(Option::is_none)
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // A message that cannot be a header value: the code alone.
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    Frame::trailers(map)
}
