//! A load client for `sluice control` (bench/control.sh): many ADS streams, each posing as a
//! proxy, to measure how long a config change takes to reach all of them.
//!
//! It opens `--streams` ADS streams (default 10,000) over `--connections` HTTP/2 connections
//! (default 100: one tonic `Channel` is one connection, and the streams multiplex on it), each
//! with its own node id and subscribed to the collections a sluice sidecar subscribes to
//! (`sluice_proxy::xds_source::collections()`): state of the world
//! (`StreamAggregatedResources`, istiod's default), or with `--delta` incremental
//! (`DeltaAggregatedResources`, as `sluice sidecar --xds-delta`). Every response is ACKed at
//! once.
//!
//! How much of each response it decodes: by default only what it needs (version, type URL,
//! nonce; the resources are skipped over in the received buffer, not copied), because the
//! client stands in for thousands of proxies on the control plane's own machine and must cost
//! less than what it measures. Receiving a 1,001-VirtualService collection on 2,000 streams as
//! Envoy's `DiscoveryResponse` (`--full`: `AggregatedDiscoveryServiceClient`, every resource
//! copied into its `Any`) cost the client 1.1 s of CPU per change, as much as the control plane
//! spent sending it; decoded lightly, 0.4 s. `--decode` also decodes every resource as a proxy
//! would (`sluice_xds::decode_resource`).
//!
//! Once every stream has received every collection it prints a `ready` JSON line. Then, for
//! each of `--rounds` rounds, it rewrites the first `timeout:` line of `--config-file` (a
//! VirtualService in the folder the control plane serves; written to a temporary file and
//! renamed into place, so the control plane never reads half of it), noting the instant just
//! before the write, and waits until every stream has received a new version of the watched
//! collection (`--watch`, the VirtualServices). One JSON line per round: the arrival times
//! across streams (p50/p90/p99/max, ms after the write), the version, and the bytes each stream
//! received (protobuf size of the responses, without gRPC and HTTP/2 framing). A summary line
//! follows with the medians of the rounds.
//!
//! With `--step` it waits for a line on stdin before each round (and stops at `quit` or end of
//! input), so a script can take its own measurements between rounds; after the summary it keeps
//! the streams open until `quit` or the end of input.
//!
//! It only ever connects to a loopback address.
//!
//! ```sh
//! cargo run --release -p sluice-control --example ads_load -- --xds 127.0.0.1:15010 \
//!     --streams 10000 --connections 100 --config-file DIR/route.yaml --rounds 5
//! ```

use std::io::BufRead as _;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sluice_xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sluice_xds::prost::bytes::Buf;
use sluice_xds::prost::{encoding, DecodeError, Message as _};
use sluice_xds::tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use sluice_xds::tonic::transport::{Channel, Endpoint};
use sluice_xds::tonic::Status;
use sluice_xds::Node;
use tokio::sync::mpsc;

const USAGE: &str = "usage: ads_load --xds 127.0.0.1:PORT [--streams 10000] [--connections 100]
    [--config-file FILE --rounds K] [--step] [--watch TYPE_URL] [--delta] [--full] [--decode]
    [--threads 1]
    [--open-rate STREAMS_PER_S] [--ready-timeout 600s] [--round-timeout 120s] [--pause 2s]
    [--node-prefix load]";

/// The command line.
struct Args {
    xds: SocketAddr,
    streams: usize,
    connections: usize,
    config_file: Option<PathBuf>,
    rounds: usize,
    step: bool,
    watch: String,
    delta: bool,
    full: bool,
    decode: bool,
    threads: usize,
    open_rate: u64,
    ready_timeout: Duration,
    round_timeout: Duration,
    pause: Duration,
    node_prefix: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        xds: SocketAddr::from(([127, 0, 0, 1], 15010)),
        streams: 10_000,
        connections: 100,
        config_file: None,
        rounds: 0,
        step: false,
        watch: "networking.istio.io/v1/VirtualService".to_string(),
        delta: false,
        full: false,
        decode: false,
        threads: 1,
        open_rate: 0,
        ready_timeout: Duration::from_secs(600),
        round_timeout: Duration::from_secs(120),
        pause: Duration::from_secs(2),
        node_prefix: "load".to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        let seconds = |v: String| -> Result<Duration, String> {
            let n = v.strip_suffix('s').unwrap_or(&v);
            n.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{flag}: {v:?} is not a duration in seconds"))
        };
        match flag.as_str() {
            "--xds" => {
                let v = value()?;
                args.xds = v
                    .parse()
                    .map_err(|_| format!("--xds {v:?}: not IP:PORT (an IP literal)"))?;
            }
            "--streams" => args.streams = number(value()?)? as usize,
            "--connections" => args.connections = number(value()?)? as usize,
            "--config-file" => args.config_file = Some(PathBuf::from(value()?)),
            "--rounds" => args.rounds = number(value()?)? as usize,
            "--step" => args.step = true,
            "--watch" => args.watch = value()?,
            "--delta" => args.delta = true,
            "--full" => args.full = true,
            "--decode" => {
                args.full = true;
                args.decode = true;
            }
            "--threads" => args.threads = number(value()?)?.max(1) as usize,
            "--open-rate" => args.open_rate = number(value()?)?,
            "--ready-timeout" => args.ready_timeout = seconds(value()?)?,
            "--round-timeout" => args.round_timeout = seconds(value()?)?,
            "--pause" => args.pause = seconds(value()?)?,
            "--node-prefix" => args.node_prefix = value()?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // A load generator must never be pointed at someone else's machine by mistake.
    if !args.xds.ip().is_loopback() {
        return Err(format!(
            "--xds {}: only loopback addresses are allowed",
            args.xds
        ));
    }
    if args.streams == 0 || args.connections == 0 {
        return Err("--streams and --connections must be at least 1".to_string());
    }
    if args.rounds > 0 && args.config_file.is_none() {
        return Err("--rounds needs --config-file".to_string());
    }
    Ok(args)
}

/// What one stream has seen. Written by its task, read by the main task's polls.
#[derive(Default)]
struct Slot {
    /// Bit i: collection i has been received at least once.
    seen: AtomicU64,
    bytes: AtomicU64,
    responses: AtomicU64,
    decode_errors: AtomicU64,
    /// Each new version of the watched collection: (version, nanoseconds since `Shared::start`).
    watched: Mutex<Vec<(String, u64)>>,
    /// `watched.len()`, for polls that do not need the lock.
    watched_count: AtomicU64,
    ended: AtomicBool,
}

struct Shared {
    start: Instant,
    collections: Vec<String>,
    watch: String,
    delta: bool,
    full: bool,
    decode: bool,
    node_prefix: String,
    slots: Vec<Slot>,
    /// Error messages of ended streams, the first few.
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn all_seen(&self) -> u64 {
        (1u64 << self.collections.len()) - 1
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn note_error(&self, message: String) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 10 {
                e.push(message);
            }
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(b, r), s| {
            (
                b + s.bytes.load(Ordering::Relaxed),
                r + s.responses.load(Ordering::Relaxed),
            )
        })
    }

    fn ended(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.ended.load(Ordering::Relaxed))
            .count()
    }
}

/// The node a stream presents: Istio's form, one pod per stream.
fn node(prefix: &str, index: usize) -> Node {
    Node {
        id: format!("sidecar~127.0.0.1~{prefix}-{index}.default~default.svc.cluster.local"),
        cluster: "ads-load".to_string(),
        user_agent_name: "sluice-ads-load".to_string(),
        ..Node::default()
    }
}

/// The fields of a `DiscoveryResponse` or `DeltaDiscoveryResponse` the load client needs (the
/// two messages number them alike); the resources (field 2) are skipped over in the received
/// buffer, neither copied nor parsed.
#[derive(Default)]
struct LightResponse {
    /// `version_info`, or a delta response's `system_version_info`.
    version_info: String,
    type_url: String,
    nonce: String,
}

impl LightResponse {
    /// Reads fields 1 (`version_info` / `system_version_info`), 4 (`type_url`) and 5 (`nonce`)
    /// of envoy.service.discovery.v3.DiscoveryResponse or DeltaDiscoveryResponse, skipping
    /// every other field.
    fn decode(buf: &mut impl Buf) -> Result<LightResponse, DecodeError> {
        let mut response = LightResponse::default();
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(buf)?;
            let ctx = encoding::DecodeContext::default();
            match tag {
                1 => encoding::string::merge(wire_type, &mut response.version_info, buf, ctx)?,
                4 => encoding::string::merge(wire_type, &mut response.type_url, buf, ctx)?,
                5 => encoding::string::merge(wire_type, &mut response.nonce, buf, ctx)?,
                _ => encoding::skip_field(wire_type, tag, buf, ctx)?,
            }
        }
        Ok(response)
    }
}

/// A [`LightResponse`] and the size of the message it came from.
struct Light {
    response: LightResponse,
    bytes: usize,
}

/// Requests of type `R` out, [`Light`] responses in.
struct LightCodec<R>(PhantomData<R>);

struct RequestEncoder<R>(PhantomData<R>);

struct LightDecoder;

impl<R: sluice_xds::prost::Message + Send + 'static> Codec for LightCodec<R> {
    type Encode = R;
    type Decode = Light;
    type Encoder = RequestEncoder<R>;
    type Decoder = LightDecoder;

    fn encoder(&mut self) -> RequestEncoder<R> {
        RequestEncoder(PhantomData)
    }

    fn decoder(&mut self) -> LightDecoder {
        LightDecoder
    }
}

impl<R: sluice_xds::prost::Message> Encoder for RequestEncoder<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a request: {e}")))
    }
}

impl Decoder for LightDecoder {
    type Item = Light;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Light>, Status> {
        let bytes = src.remaining();
        let response = LightResponse::decode(src)
            .map_err(|e| Status::internal(format!("decoding a response: {e}")))?;
        Ok(Some(Light { response, bytes }))
    }
}

/// The gRPC methods of the Aggregated Discovery Service.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest response accepted (a whole collection is one message).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// The request side of one stream: state of the world or delta.
enum Requests {
    Sotw(mpsc::UnboundedSender<DiscoveryRequest>),
    Delta(mpsc::UnboundedSender<DeltaDiscoveryRequest>),
}

impl Requests {
    /// Subscribes to `type_url` (the first request of a stream carries the node). False when
    /// the stream is gone.
    fn subscribe(&self, type_url: &str, node: Option<Node>) -> bool {
        match self {
            Requests::Sotw(tx) => tx
                .send(DiscoveryRequest {
                    node,
                    type_url: type_url.to_string(),
                    ..DiscoveryRequest::default()
                })
                .is_ok(),
            Requests::Delta(tx) => tx
                .send(DeltaDiscoveryRequest {
                    node,
                    type_url: type_url.to_string(),
                    ..DeltaDiscoveryRequest::default()
                })
                .is_ok(),
        }
    }

    /// ACKs a response. False when the stream is gone.
    fn ack(&self, got: Got) -> bool {
        match self {
            Requests::Sotw(tx) => tx
                .send(DiscoveryRequest {
                    type_url: got.type_url,
                    version_info: got.version,
                    response_nonce: got.nonce,
                    ..DiscoveryRequest::default()
                })
                .is_ok(),
            Requests::Delta(tx) => tx
                .send(DeltaDiscoveryRequest {
                    type_url: got.type_url,
                    response_nonce: got.nonce,
                    ..DeltaDiscoveryRequest::default()
                })
                .is_ok(),
        }
    }
}

/// The response side of one stream, decoded fully (`--full`) or lightly.
enum Responses {
    Full(Streaming<DiscoveryResponse>),
    FullDelta(Streaming<DeltaDiscoveryResponse>),
    Light(Streaming<Light>),
}

/// What the load client keeps of a response.
struct Got {
    type_url: String,
    version: String,
    nonce: String,
    bytes: usize,
    decode_errors: usize,
}

/// An unbounded channel's receiver as a request stream.
fn request_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

/// Opens one ADS stream on `channel`.
async fn open(channel: Channel, delta: bool, full: bool) -> Result<(Requests, Responses), Status> {
    if full {
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        if delta {
            let (tx, rx) = mpsc::unbounded_channel();
            let responses = client
                .delta_aggregated_resources(request_stream(rx))
                .await?;
            return Ok((
                Requests::Delta(tx),
                Responses::FullDelta(responses.into_inner()),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let responses = client
            .stream_aggregated_resources(request_stream(rx))
            .await?;
        return Ok((Requests::Sotw(tx), Responses::Full(responses.into_inner())));
    }
    let mut grpc =
        sluice_xds::tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    if delta {
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let responses = grpc
            .streaming(
                sluice_xds::tonic::Request::new(request_stream(rx)),
                http::uri::PathAndQuery::from_static(DELTA_PATH),
                LightCodec(PhantomData),
            )
            .await?;
        return Ok((
            Requests::Delta(tx),
            Responses::Light(responses.into_inner()),
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let responses = grpc
        .streaming(
            sluice_xds::tonic::Request::new(request_stream(rx)),
            http::uri::PathAndQuery::from_static(SOTW_PATH),
            LightCodec(PhantomData),
        )
        .await?;
    Ok((Requests::Sotw(tx), Responses::Light(responses.into_inner())))
}

/// How many of `anys` (the resources of a response of `type_url`) fail to decode.
fn decode_failures<'a>(type_url: &str, anys: impl Iterator<Item = &'a sluice_xds::Any>) -> usize {
    anys.filter(|any| sluice_xds::decode_resource(type_url, *any).is_err())
        .count()
}

impl Responses {
    async fn next(&mut self, decode: bool) -> Result<Option<Got>, Status> {
        match self {
            Responses::Full(stream) => {
                let Some(r) = stream.message().await? else {
                    return Ok(None);
                };
                let decode_errors = if decode {
                    decode_failures(&r.type_url, r.resources.iter())
                } else {
                    0
                };
                Ok(Some(Got {
                    bytes: r.encoded_len(),
                    type_url: r.type_url,
                    version: r.version_info,
                    nonce: r.nonce,
                    decode_errors,
                }))
            }
            Responses::FullDelta(stream) => {
                let Some(r) = stream.message().await? else {
                    return Ok(None);
                };
                let decode_errors = if decode {
                    decode_failures(
                        &r.type_url,
                        r.resources.iter().filter_map(|res| res.resource.as_ref()),
                    )
                } else {
                    0
                };
                Ok(Some(Got {
                    bytes: r.encoded_len(),
                    type_url: r.type_url,
                    version: r.system_version_info,
                    nonce: r.nonce,
                    decode_errors,
                }))
            }
            Responses::Light(stream) => {
                let Some(light) = stream.message().await? else {
                    return Ok(None);
                };
                Ok(Some(Got {
                    bytes: light.bytes,
                    type_url: light.response.type_url,
                    version: light.response.version_info,
                    nonce: light.response.nonce,
                    decode_errors: 0,
                }))
            }
        }
    }
}

/// One ADS stream: subscribe to every collection, ACK every response, record what arrives.
async fn run_stream(index: usize, channel: Channel, shared: Arc<Shared>) {
    let slot = &shared.slots[index];
    let (requests, mut responses) = match open(channel, shared.delta, shared.full).await {
        Ok(r) => r,
        Err(status) => {
            shared.note_error(format!("stream {index}: not opened: {status}"));
            slot.ended.store(true, Ordering::Relaxed);
            return;
        }
    };
    for (i, type_url) in shared.collections.iter().enumerate() {
        requests.subscribe(type_url, (i == 0).then(|| node(&shared.node_prefix, index)));
    }
    let mut watched_version: Option<String> = None;
    loop {
        let got = match responses.next(shared.decode).await {
            Ok(Some(got)) => got,
            Ok(None) => {
                shared.note_error(format!("stream {index}: closed by the control plane"));
                break;
            }
            Err(status) => {
                shared.note_error(format!("stream {index}: {status}"));
                break;
            }
        };
        let at = shared.now_ns();
        slot.bytes.fetch_add(got.bytes as u64, Ordering::Relaxed);
        slot.responses.fetch_add(1, Ordering::Relaxed);
        slot.decode_errors
            .fetch_add(got.decode_errors as u64, Ordering::Relaxed);
        if let Some(i) = shared.collections.iter().position(|c| *c == got.type_url) {
            slot.seen.fetch_or(1 << i, Ordering::Relaxed);
        }
        if got.type_url == shared.watch && watched_version.as_deref() != Some(got.version.as_str())
        {
            watched_version = Some(got.version.clone());
            if let Ok(mut w) = slot.watched.lock() {
                w.push((got.version.clone(), at));
                slot.watched_count.store(w.len() as u64, Ordering::Release);
            }
        }
        if !requests.ack(got) {
            break;
        }
    }
    slot.ended.store(true, Ordering::Relaxed);
}

/// Rewrites the first `timeout:` line of `path` (block style, as `timeout: 5s`) to `seconds`,
/// through a temporary file renamed into place.
fn rewrite_timeout(path: &Path, seconds: u64) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut done = false;
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !done && trimmed.starts_with("timeout:") {
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str(&format!("timeout: {seconds}s"));
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !done {
        return Err(format!("{}: no `timeout:` line to change", path.display()));
    }
    let tmp = path.with_extension("ads-load.tmp");
    std::fs::write(&tmp, out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

/// Lines of stdin, read on a thread of their own (`--step`).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn run(args: Args) -> Result<(), String> {
    let collections = sluice_proxy::xds_source::collections();
    if !collections.contains(&args.watch) {
        return Err(format!(
            "--watch {}: not a collection a sidecar subscribes to ({})",
            args.watch,
            collections.join(", ")
        ));
    }
    if collections.len() > 64 {
        return Err("more than 64 collections".to_string());
    }
    if let Some(file) = &args.config_file {
        // Fail before connecting, not after the streams are up.
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !text.lines().any(|l| l.trim_start().starts_with("timeout:")) {
            return Err(format!("{}: no `timeout:` line to change", file.display()));
        }
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        collections,
        watch: args.watch.clone(),
        delta: args.delta,
        full: args.full,
        decode: args.decode,
        node_prefix: args.node_prefix.clone(),
        slots: (0..args.streams).map(|_| Slot::default()).collect(),
        errors: Mutex::default(),
    });

    // ---- connect ----
    let endpoint = Endpoint::from_shared(format!("http://{}", args.xds))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connection {i} to {}: {e}", args.xds))?;
        channels.push(channel);
    }
    let connected_s = shared.start.elapsed().as_secs_f64();
    eprintln!(
        "[ads_load] {} connections to {} in {connected_s:.2}s; opening {} streams",
        args.connections, args.xds, args.streams
    );
    let per_tick = (args.open_rate / 100).max(1);
    for i in 0..args.streams {
        let channel = channels[i % channels.len()].clone();
        tokio::spawn(run_stream(i, channel, shared.clone()));
        if args.open_rate > 0 && (i as u64 + 1).is_multiple_of(per_tick) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- wait until every stream has everything ----
    let all = shared.all_seen();
    let mut last_report = Instant::now();
    loop {
        let complete = shared
            .slots
            .iter()
            .filter(|s| s.seen.load(Ordering::Relaxed) == all)
            .count();
        let ended = shared.ended();
        if complete == args.streams {
            break;
        }
        if ended > 0 || shared.start.elapsed() > args.ready_timeout {
            let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
            emit(json!({
                "event": "failed",
                "phase": "ready",
                "complete": complete,
                "streams": args.streams,
                "ended": ended,
                "elapsed_s": round3(shared.start.elapsed().as_secs_f64()),
                "errors": errors,
            }));
            return Err(format!(
                "{complete} of {} streams received every collection ({ended} ended)",
                args.streams
            ));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "[ads_load] {complete}/{} streams complete after {:.1}s",
                args.streams,
                shared.start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_s = shared.start.elapsed().as_secs_f64();
    let (bytes, responses) = shared.totals();
    let decode_errors: u64 = shared
        .slots
        .iter()
        .map(|s| s.decode_errors.load(Ordering::Relaxed))
        .sum();
    let n = args.streams as f64;
    emit(json!({
        "event": "ready",
        "streams": args.streams,
        "connections": args.connections,
        "collections": shared.collections.len(),
        "connect_s": round3(connected_s),
        "ready_s": round3(ready_s),
        "bytes_per_stream": (bytes as f64 / n).round(),
        "responses_per_stream": round3(responses as f64 / n),
        "delta": args.delta,
        "full": args.full,
        "decoded": args.decode,
        "decode_errors": decode_errors,
    }));

    // ---- rounds ----
    let mut stdin = args.step.then(stdin_lines);
    let mut results: Vec<serde_json::Value> = Vec::new();
    let (mut p50s, mut p99s, mut maxes, mut per_stream) = (vec![], vec![], vec![], vec![]);
    for round in 1..=args.rounds {
        if let Some(lines) = stdin.as_mut() {
            emit(json!({"event": "waiting", "round": round}));
            match lines.recv().await {
                Some(line) if line.trim() != "quit" => {}
                _ => break,
            }
        } else if round > 1 {
            tokio::time::sleep(args.pause).await;
        }
        let Some(file) = &args.config_file else { break };
        let marks: Vec<u64> = shared
            .slots
            .iter()
            .map(|s| s.watched_count.load(Ordering::Acquire))
            .collect();
        let (bytes0, responses0) = shared.totals();
        // A value no earlier round (nor the file as written) had, so every round is a change.
        let timeout_s = 100 + round as u64;
        let t0_unix = unix_now();
        let t0 = shared.now_ns();
        rewrite_timeout(file, timeout_s)?;
        let deadline = Instant::now() + args.round_timeout;
        let converged = loop {
            let converged = shared
                .slots
                .iter()
                .zip(&marks)
                .filter(|(s, mark)| s.watched_count.load(Ordering::Acquire) > **mark)
                .count();
            if converged == args.streams
                || converged + shared.ended() >= args.streams
                || Instant::now() > deadline
            {
                break converged;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut arrivals = Vec::with_capacity(converged);
        let mut versions = std::collections::BTreeSet::new();
        for (slot, mark) in shared.slots.iter().zip(&marks) {
            if let Ok(w) = slot.watched.lock() {
                if let Some((version, at)) = w.get(*mark as usize) {
                    arrivals.push(at.saturating_sub(t0) as f64 / 1e6);
                    versions.insert(version.clone());
                }
            }
        }
        arrivals.sort_by(f64::total_cmp);
        let (bytes1, responses1) = shared.totals();
        let stream_bytes = (bytes1 - bytes0) as f64 / n;
        let result = json!({
            "event": "round",
            "round": round,
            "t0_unix": t0_unix,
            "timeout": format!("{timeout_s}s"),
            "versions": versions.into_iter().collect::<Vec<_>>(),
            "converged": converged,
            "streams": args.streams,
            "ended": shared.ended(),
            "p50_ms": round3(quantile(&arrivals, 0.50)),
            "p90_ms": round3(quantile(&arrivals, 0.90)),
            "p99_ms": round3(quantile(&arrivals, 0.99)),
            "max_ms": round3(arrivals.last().copied().unwrap_or(f64::NAN)),
            "first_ms": round3(arrivals.first().copied().unwrap_or(f64::NAN)),
            "bytes_per_stream": stream_bytes.round(),
            "responses_per_stream": round3((responses1 - responses0) as f64 / n),
        });
        emit(result.clone());
        if converged == args.streams {
            p50s.push(quantile(&arrivals, 0.50));
            p99s.push(quantile(&arrivals, 0.99));
            maxes.push(arrivals.last().copied().unwrap_or(f64::NAN));
            per_stream.push(stream_bytes);
        }
        results.push(result);
    }
    let complete_rounds = p99s.len();
    emit(json!({
        "event": "summary",
        "streams": args.streams,
        "connections": args.connections,
        "rounds": results.len(),
        "complete_rounds": complete_rounds,
        "p50_ms_median": round3(median(p50s)),
        "p99_ms_median": round3(median(p99s)),
        "max_ms_median": round3(median(maxes)),
        "bytes_per_stream_median": median(per_stream).round(),
        "ended": shared.ended(),
        "errors": shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
    }));
    if let Some(lines) = stdin.as_mut() {
        // Hold the streams until told (the script reads the control plane's state with every
        // stream still connected).
        while let Some(line) = lines.recv().await {
            if line.trim() == "quit" {
                break;
            }
        }
    }
    if complete_rounds < results.len() {
        return Err(format!(
            "{} of {} rounds did not reach every stream",
            results.len() - complete_rounds,
            results.len()
        ));
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ads_load: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ads_load: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("ads_load: {e}");
        std::process::exit(1);
    }
}
