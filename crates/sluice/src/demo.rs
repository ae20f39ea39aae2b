//! `sluice demo`: a self-contained tour that needs no root and no network. It starts a small
//! httpbin-like upstream on loopback, a sidecar in explicit-proxy mode with the example config,
//! and prints curl commands that show an allowed call, a blocked call and a timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_proxy::sidecar::{self, SidecarOptions};
use tokio::net::TcpListener;

/// The demo's example configuration, compiled in so the demo runs from any directory.
const EXAMPLE_FILES: [(&str, &str); 3] = [
    (
        "00-mesh.yaml",
        include_str!("../../../examples/demo/00-mesh.yaml"),
    ),
    (
        "10-httpbin-serviceentry.yaml",
        include_str!("../../../examples/demo/10-httpbin-serviceentry.yaml"),
    ),
    (
        "20-httpbin-timeout.yaml",
        include_str!("../../../examples/demo/20-httpbin-timeout.yaml"),
    ),
];

/// The port the example ServiceEntry sends `httpbin.demo` to.
pub const UPSTREAM_PORT: u16 = 18080;

/// Options of `sluice demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Port of the demo's explicit proxy, the one the curl commands use (`curl -x
    /// http://127.0.0.1:PORT`).
    #[arg(long = "port", visible_alias = "proxy-port", default_value_t = 15080)]
    pub port: u16,
    /// Port of the admin API (config dump, clusters, stats).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Directory to write the example config into (default: a new temporary directory).
    /// Edit its files while the demo runs to see changes applied live.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
}

/// A tiny httpbin: `/headers`, `/status/N`, `/delay/N` (seconds, at most 10), `/get`.
async fn upstream_handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    let headers_json = || {
        let mut map = serde_json::Map::new();
        for (k, v) in req.headers() {
            map.insert(
                title_case(k.as_str()),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
        serde_json::Value::Object(map)
    };
    let resp = if path == "/headers" || path == "/get" {
        json(
            StatusCode::OK,
            serde_json::to_string_pretty(&serde_json::json!({ "headers": headers_json() }))
                .unwrap_or_default()
                + "\n",
        )
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        json(status, String::new())
    } else if let Some(secs) = path.strip_prefix("/delay/") {
        let secs = secs.parse::<f64>().unwrap_or(0.0).clamp(0.0, 10.0);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        json(
            StatusCode::OK,
            serde_json::to_string_pretty(
                &serde_json::json!({ "delayed": secs, "headers": headers_json() }),
            )
            .unwrap_or_default()
                + "\n",
        )
    } else {
        json(
            StatusCode::NOT_FOUND,
            "{\"error\": \"try /headers, /status/418 or /delay/2\"}\n".into(),
        )
    };
    Ok(resp)
}

/// `x-request-id` → `X-Request-Id`, as httpbin prints header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                .await;
        });
    }
}

fn write_examples(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in EXAMPLE_FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let upstream_addr = SocketAddr::from(([127, 0, 0, 1], UPSTREAM_PORT));
    let upstream = TcpListener::bind(upstream_addr)
        .await
        .with_context(|| format!("cannot start the demo upstream on {upstream_addr}"))?;
    tokio::spawn(serve_upstream(upstream));

    let (config_dir, _temp) = match args.config_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    write_examples(&config_dir)?;

    let proxy = format!("http://127.0.0.1:{}", args.port);
    println!(
        "\nsluice demo: a sidecar in explicit-proxy mode on {proxy}, config in {dir}\n\
         (REGISTRY_ONLY mesh; ServiceEntry for httpbin.demo; VirtualService with a 1s timeout)\n\n\
         Try, in another terminal:\n\
         \x20 curl -x {proxy} http://httpbin.demo/headers            # allowed: 200, note X-Envoy-Decorator-Operation\n\
         \x20 curl -x {proxy} -i http://blocked.example/              # blocked by REGISTRY_ONLY: 502\n\
         \x20 curl -x {proxy} -i http://httpbin.demo/delay/3          # VirtualService timeout: 504 after 1s\n\
         \x20 curl -s http://127.0.0.1:{admin}/config_dump             # what the proxy obeys\n\n\
         Edit or delete the files in {dir} and the proxy applies the change within a second.\n\
         Access log lines follow below. Ctrl-C stops everything.\n",
        dir = config_dir.display(),
        admin = args.admin_port,
    );
    sidecar::run(SidecarOptions {
        config: sluice_proxy::runtime::ConfigSource::Dir(config_dir),
        namespace: "default".into(),
        labels: [("app".to_string(), "demo".to_string())]
            .into_iter()
            .collect(),
        service_account: None,
        // Nothing is captured in the demo; let the OS pick free ports for the unused listeners.
        outbound_port: 0,
        inbound_port: None,
        proxy_port: args.port,
        proxy_bind: std::net::IpAddr::from([127, 0, 0, 1]),
        admin_port: args.admin_port,
        status_port: 0,
        stats_port: 0,
        downstream: Default::default(),
    })
    .await
}
