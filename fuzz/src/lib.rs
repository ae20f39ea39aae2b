//! The bodies of sluice's fuzz targets (`fuzz_targets/*.rs` only hand libFuzzer's bytes to these).
//!
//! Each function drives one public entry point the way the binary does, on attacker- or
//! user-controlled bytes. A panic, abort, stack overflow, hang or unbounded allocation anywhere
//! below is a bug: libFuzzer saves the input under `fuzz/artifacts/<target>/`, and every one found
//! becomes a plain `#[test]` in the crate it belongs to (`tests/fuzz_regressions.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Method};
use sluice_model::{compile, HttpRequestFacts, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::{Proxy, Target};
use sluice_proxy::telemetry::accesslog::{
    AccessLogConfig, AccessLogEncoding, AccessLogFormat, AccessLogRecord, AccessLogger,
};
use sluice_proxy::telemetry::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Makes a stack overflow on the calling thread a saved crash rather than a silent death.
///
/// A `no_main` fuzz binary never runs std's start-up, so std's stack-overflow handler and its
/// alternate signal stacks are absent; libFuzzer's SIGSEGV handler then runs on the exhausted
/// stack itself and the process dies before writing the input to `artifacts/`. So the handler
/// libFuzzer installed gets `SA_ONSTACK`, and each thread that runs target code an alternate
/// stack.
fn catch_stack_overflow() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    const ALT_STACK: usize = 256 * 1024;
    let alt: &'static mut [u8] = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
    // SAFETY: plain libc calls on zeroed structs we own; the alternate stack is leaked, so it
    // outlives the thread.
    unsafe {
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                && act.sa_flags & libc::SA_ONSTACK == 0
            {
                act.sa_flags |= libc::SA_ONSTACK;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        let stack = libc::stack_t {
            ss_sp: alt.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: ALT_STACK,
        };
        libc::sigaltstack(&stack, std::ptr::null_mut());
    }
}

/// Text as the config store reads it: config files are read as bytes and decoded lossily.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn sidecar() -> ProxyIdentity {
    ProxyIdentity {
        namespace: "default".into(),
        labels: [("app", "fuzz"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: Some("fuzz".into()),
        kind: ProxyKind::Sidecar,
    }
}

fn gateway() -> ProxyIdentity {
    ProxyIdentity {
        namespace: "istio-system".into(),
        labels: [("istio", "ingressgateway"), ("app", "istio-ingressgateway")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        kind: ProxyKind::Gateway,
    }
}

/// What `sluice sidecar`/`sluice gateway` do with a config file (store.rs: decode, validate every
/// resource, compile) and what `sluice analyze` does with it. Everything that decoded is compiled,
/// errors or not: the store would refuse such a file, but compile must not crash on what validation
/// missed.
fn load_and_compile(text: &str) {
    let loaded = sluice_api::decode_str(Path::new("fuzz.yaml"), text);
    for res in &loaded.resources {
        let _ = sluice_api::validate(res);
    }
    let _ = sluice_model::analyze::analyze(&loaded.resources);
    for proxy in [sidecar(), gateway()] {
        let snap = compile(&loaded.resources, &proxy, 1);
        exercise_snapshot(&snap);
    }
}

/// A few routing lookups on every host the snapshot knows, as the data path would make them.
fn exercise_snapshot(snap: &Snapshot) {
    let _ = snap.summary();
    let headers = HeaderMap::new();
    // Only looked up in the routing tables, never connected to.
    let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
    let hosts: Vec<String> = snap
        .services
        .iter()
        .take(8)
        .map(|s| s.hostname.to_string())
        .collect();
    for host in hosts.iter().map(String::as_str).chain(["unknown.example"]) {
        let facts = HttpRequestFacts {
            method: "GET",
            scheme: "http",
            authority: host,
            path_and_query: "/a/b?c=d",
            headers: &headers,
            port: 80,
        };
        let _ = snap.route_http(&facts);
        let _ = snap.route_tls(Some(host), dst);
        for port in snap.gateway_ports().iter().take(4).map(|p| p.number) {
            let _ = snap.route_gateway_http(port, &facts);
            let _ = snap.route_gateway_tls(port, Some(host));
            let _ = snap.route_gateway_tcp(port);
        }
    }
    let _ = snap.route_tcp(dst);
    let _ = snap.declared_protocol(dst);
}

/// The proxy decodes and compiles config on tokio worker threads, whose stacks are 2 MiB; the
/// fuzzer's main thread has 8 MiB and would hide a recursion that overflows a worker. So config
/// work runs on one long-lived thread with a worker's stack.
const WORKER_STACK: usize = 2 * 1024 * 1024;

type Job = (fn(&[u8]), Vec<u8>);

fn on_worker_stack(f: fn(&[u8]), data: &[u8]) {
    static WORKER: OnceLock<std::sync::Mutex<(mpsc::Sender<Job>, mpsc::Receiver<()>)>> =
        OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("config-worker".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                catch_stack_overflow();
                for (f, data) in rx {
                    f(&data);
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("config worker thread");
        std::sync::Mutex::new((jobs, done))
    });
    let worker = worker.lock().expect("config worker lock");
    worker
        .0
        .send((f, data.to_vec()))
        .expect("config worker alive");
    // A panic on the worker aborts the process (libFuzzer's panic hook) before this returns.
    worker.1.recv().expect("config worker alive");
}

/// `config_decode`: any bytes as a config file.
pub fn config_decode(data: &[u8]) {
    on_worker_stack(|data| load_and_compile(&text(data)), data);
}

/// The `istio` ConfigMap around a mesh config text, as JSON so any text embeds exactly.
pub fn mesh_configmap(mesh: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh},
    })
    .to_string()
}

/// `mesh_config`: any bytes as the `mesh` key of the `istio` ConfigMap; then the access log the
/// proxy would configure from it.
pub fn mesh_config(data: &[u8]) {
    on_worker_stack(mesh_config_on_worker, data);
}

fn mesh_config_on_worker(data: &[u8]) {
    let doc = mesh_configmap(&text(data));
    let loaded = sluice_api::decode_str(Path::new("mesh.yaml"), &doc);
    for res in &loaded.resources {
        let _ = sluice_api::validate(res);
    }
    let snap = compile(&loaded.resources, &sidecar(), 1);
    exercise_snapshot(&snap);
    let cfg = sluice_proxy::runtime::access_log_config(&snap);
    if let Ok(format) = AccessLogFormat::parse(cfg.format.as_deref(), cfg.encoding) {
        for rec in records() {
            let _ = format.render_to_string(&rec);
        }
    }
}

/// One current-thread runtime for the whole process, with tokio's clock paused: whenever every
/// task waits, time jumps to the next timer, so timeouts cost no wall time and an input that
/// leaves the proxy waiting ends at once instead of after real seconds.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
    })
}

/// `detect`: the first bytes of a connection, read through an in-memory stream that ends after
/// them, split into reads of varying sizes (the first byte picks the size) as a socket would.
pub fn detect(data: &[u8]) {
    catch_stack_overflow();
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    runtime().block_on(async {
        let mut reader = ChunkedReader { rest: bytes, chunk };
        let chunked = sluice_proxy::detect::detect(&mut reader).await;
        if let Ok((prefix, _)) = &chunked {
            // The prefix is replayed to the upstream: it must be exactly what was read.
            assert!(
                bytes.starts_with(prefix),
                "detect returned bytes it never read"
            );
        }
        // How the client's bytes were split into segments must not change what they are.
        let mut whole = ChunkedReader {
            rest: bytes,
            chunk: usize::MAX,
        };
        let at_once = sluice_proxy::detect::detect(&mut whole).await;
        if let (Ok((_, a)), Ok((_, b))) = (&chunked, &at_once) {
            assert_eq!(a, b, "detection depends on how the bytes were segmented");
        }
    });
}

/// A reader yielding `rest` in chunks of `chunk` bytes, then EOF.
struct ChunkedReader<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl tokio::io::AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.rest.len()).min(buf.remaining());
        let (head, tail) = self.rest.split_at(n);
        buf.put_slice(head);
        self.rest = tail;
        std::task::Poll::Ready(Ok(()))
    }
}

/// `client_hello`: bytes as a TLS record carrying a ClientHello; the SNI and every field the
/// gateway reads from it.
pub fn client_hello(data: &[u8]) {
    catch_stack_overflow();
    let _ = sluice_proxy::detect::client_hello_sni(data);
    let _ = sluice_proxy::detect::with_client_hello(data, |hello| {
        let _ = hello.server_name();
        let _ = hello.alpn().map(|a| a.count());
        let _ = hello.signature_schemes().len();
        let _ = hello.cipher_suites().len();
    });
}

/// The fixed config `http_head` proxies through: REGISTRY_ONLY (an unknown host is answered 502
/// by the proxy itself), one HTTP service whose only endpoint is a closed loopback port, and a
/// VirtualService with the request-path features (rewrite, redirect, direct response, header
/// operations, fault abort, regex and header matches). No route leads off loopback.
pub const HTTP_HEAD_CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/null
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.fuzz]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 1}
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.fuzz]
  http:
  - match: [{uri: {prefix: /redirect}}]
    redirect: {uri: /elsewhere, authority: other.fuzz, redirectCode: 308}
  - match: [{uri: {exact: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{headers: {x-abort: {exact: "yes"}}}]
    fault: {abort: {httpStatus: 429, percentage: {value: 100}}}
  - match: [{uri: {regex: "/re/[a-z]+"}}, {queryParams: {q: {prefix: a}}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: svc.fuzz}}]
    retries: {attempts: 0}
    timeout: 2s
  - match: [{uri: {prefix: /rewrite}, method: {exact: POST}}]
    rewrite: {uri: /r, authority: svc.fuzz}
    headers:
      request: {set: {x-set: a}, add: {x-add: b}, remove: [x-remove]}
      response: {set: {x-resp: c}, remove: [server]}
    route: [{destination: {host: svc.fuzz}}]
    retries: {attempts: 0}
    timeout: 2s
  - route: [{destination: {host: svc.fuzz}}]
    retries: {attempts: 0}
    timeout: 2s
"#;

/// A format that reads every kind of record field, including arbitrary request and response
/// headers (so the data path copies header maps into records).
const HTTP_HEAD_LOG_FORMAT: &str =
    "%START_TIME% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% \
%DURATION% %REQ(:AUTHORITY)% %REQ(X-ANY)% %RESP(CONTENT-TYPE)% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% \
%DOWNSTREAM_REMOTE_ADDRESS% %ROUTE_NAME%\n";

struct HttpHeadEnv {
    proxy: Arc<Proxy>,
}

/// Moves this process into a network namespace of its own with only loopback up, so that no
/// input can make the proxy reach a real network (DNS servers included), whatever it routes.
/// Needs root (CAP_SYS_ADMIN); without it the run stops rather than risk traffic.
fn isolate_network() {
    // SAFETY: unshare and the interface ioctls take no Rust-visible memory beyond `req`, which
    // lives on this stack frame for the duration of each call.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            eprintln!(
                "http_head: cannot enter a private network namespace ({}); run as root",
                std::io::Error::last_os_error()
            );
            std::process::exit(2);
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket for the loopback ioctl");
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS lo"
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req),
            0,
            "SIOCSIFFLAGS lo"
        );
        libc::close(fd);
    }
}

fn http_head_env() -> &'static HttpHeadEnv {
    static ENV: OnceLock<HttpHeadEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        // Before the runtime starts its threads: they inherit the namespace.
        isolate_network();
        let loaded = sluice_api::decode_str(Path::new("http_head.yaml"), HTTP_HEAD_CONFIG);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let snap = compile(&loaded.resources, &sidecar(), 1);
        let log = AccessLogger::new(AccessLogConfig {
            path: Some("/dev/null".into()),
            encoding: AccessLogEncoding::Text,
            format: Some(HTTP_HEAD_LOG_FORMAT.into()),
        })
        .expect("access log on /dev/null");
        let proxy = Proxy::new(
            Arc::new(ArcSwap::from_pointee(snap)),
            log,
            Arc::new(Metrics::new("fuzz")),
            "default",
            &sidecar().labels,
        );
        HttpHeadEnv {
            proxy: Arc::new(proxy),
        }
    })
}

/// `http_head`: bytes as everything a client sends on a captured outbound connection to
/// 127.0.0.1:80, through the real dispatch (detection, HTTP/1 or HTTP/2 serving, routing, header
/// handling, upstream attempt, access log, metrics); the client's half closes after them and
/// everything the proxy answers is read.
pub fn http_head(data: &[u8]) {
    catch_stack_overflow();
    let env = http_head_env();
    let proxy = env.proxy.clone();
    runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), 40000);
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
        let target = Target {
            addr: local,
            host: None,
        };
        let served = tokio::spawn(sluice_proxy::outbound::dispatch(
            proxy, server, remote, local, target,
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            let _ = wr.write_all(data).await;
            // Closing at once would make hyper drop the requests still in flight (it does not
            // allow half-closed HTTP/1 connections), so nothing past the head would run. The
            // clock is paused: this sleep ends as soon as the proxy has nothing left to do but
            // wait for more input, then the client closes.
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut answer = Vec::new();
            let _ = rd.read_to_end(&mut answer).await;
            if std::env::var_os("SLUICE_FUZZ_SHOW").is_some() {
                eprintln!("http_head answer: {}", String::from_utf8_lossy(&answer));
            }
        };
        // A connection the proxy never finishes after the client has said everything and closed
        // is a hang; libFuzzer's -timeout reports it.
        tokio::join!(write, read);
        if let Err(e) = served.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    });
}

/// Records to render with a fuzzed format: an HTTP record with every field set, and a TCP record
/// with nothing set.
fn records() -> [AccessLogRecord; 2] {
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let mut http = AccessLogRecord::new(start);
    http.method = Some(Method::POST);
    http.path = Some("/p/ä?q=1&r=\"x\"".into());
    http.protocol = Some("HTTP/1.1");
    http.response_code = 503;
    http.response_flags = "UF,URX".into();
    http.response_code_details =
        Some("upstream_reset_before_response_started{connection_failure}".into());
    http.upstream_transport_failure_reason = Some("delayed connect error: 111".into());
    http.bytes_received = 1 << 40;
    http.bytes_sent = 12;
    http.duration = Duration::from_millis(1_500);
    http.upstream_service_time = Some(7);
    http.x_forwarded_for = Some(HeaderValue::from_static("10.0.0.1, 10.0.0.2"));
    http.user_agent = Some(HeaderValue::from_bytes(b"curl/8 \xff\"\\").expect("header bytes"));
    http.request_id = Some(HeaderValue::from_static("0000-1111"));
    http.authority = Some(HeaderValue::from_static("svc.fuzz:80"));
    http.upstream_host = Some("127.0.0.1:1".parse().expect("addr"));
    http.upstream_cluster = Some(Arc::from("outbound|80||svc.fuzz"));
    http.upstream_local_address = Some("[::1]:5555".parse().expect("addr"));
    http.downstream_local_address = Some("127.0.0.1:80".parse().expect("addr"));
    http.downstream_remote_address = Some("127.0.0.7:40000".parse().expect("addr"));
    http.downstream_peer_uri_san = Some(Arc::from("spiffe://cluster.local/ns/default/sa/fuzz"));
    http.requested_server_name = Some(Arc::from("svc.fuzz"));
    http.connection_termination_details = Some("ümlaut détails".into());
    http.route_name = Some(Arc::from("route-é-ü"));
    let mut req = HeaderMap::new();
    req.insert("x-any", HeaderValue::from_static("any"));
    req.append("x-any", HeaderValue::from_static("second"));
    req.insert(
        "x-bin",
        HeaderValue::from_bytes(b"\x80\x81").expect("header bytes"),
    );
    http.request_headers = Some(req);
    let mut resp = HeaderMap::new();
    resp.insert("content-type", HeaderValue::from_static("text/plain"));
    http.response_headers = Some(resp);
    [http, AccessLogRecord::new(SystemTime::UNIX_EPOCH)]
}

/// `accesslog_format`: the first byte picks TEXT or JSON, the rest is the format string (as the
/// mesh config's `accessLogFormat` carries it); a format that compiles renders both records.
pub fn accesslog_format(data: &[u8]) {
    catch_stack_overflow();
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(format) = std::str::from_utf8(rest) else {
        return;
    };
    let encoding = if selector & 1 == 0 {
        AccessLogEncoding::Text
    } else {
        AccessLogEncoding::Json
    };
    if let Ok(parsed) = AccessLogFormat::parse(Some(format), encoding) {
        let _ = parsed.needs_request_headers();
        let _ = parsed.needs_response_headers();
        for rec in records() {
            let line = parsed.render_to_string(&rec);
            if encoding == AccessLogEncoding::Json {
                // A JSON line must be one valid JSON value followed by the newline.
                let body = line
                    .strip_suffix('\n')
                    .expect("JSON line ends with a newline");
                if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
                    panic!("JSON access log line is not JSON ({e}): {body:?}");
                }
            }
        }
    }
}
