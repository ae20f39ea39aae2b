//! The Telemetry API (`telemetry.istio.io/v1`) enforced by a proxy that reads a config folder:
//! `curl` through the proxy's explicit HTTP port (its client side, `match.mode: CLIENT`) to
//! httpbin under gunicorn (from the test venv, `$SLUICE_TEST_VENV`), on loopback only.
//!
//! Access logging turned off mesh-wide and back on for one workload, a filter that logs only
//! errors, a metric disabled, a tag removed, a tag valued from a request header, a Telemetry
//! edit applied without a restart, and a bad CEL expression refused (file, line, field) while
//! the last good Telemetry keeps acting; the same from a control plane's Telemetry collection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_api::networking::Labels;
use sluice_model::{ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::Proxy;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::store::{ConfigStore, StoreStatus};
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::net::TcpListener;

/// httpbin under gunicorn on a loopback port, stopped when dropped.
struct Httpbin {
    child: Child,
    port: u16,
}

impl Httpbin {
    fn start() -> Httpbin {
        let venv = std::env::var_os("SLUICE_TEST_VENV")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
        let gunicorn = venv.join("bin/gunicorn");
        assert!(
            gunicorn.is_file(),
            "prerequisite missing: gunicorn with httpbin in the test venv {} (run \
             scripts/install-test-deps.sh, or set SLUICE_TEST_VENV)",
            venv.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(gunicorn)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args([
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "8",
            ])
            .arg("httpbin:app")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gunicorn");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "httpbin did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Httpbin { child, port }
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `httpbin.local:80`, a ServiceEntry whose endpoint is the test's httpbin.
fn service_entry(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
"#
    )
}

/// A proxy of workload `app=<app>` in `default`, over the config folder `dir` (watched).
struct TestProxy {
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    access_log: AccessLogger,
    metrics: Arc<Metrics>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl TestProxy {
    async fn start(dir: &Path, app: &str) -> TestProxy {
        let labels: Labels = [("app".to_string(), app.to_string())].into_iter().collect();
        let identity = ProxyIdentity {
            namespace: "default".into(),
            labels: labels.clone(),
            service_account: None,
            kind: ProxyKind::Sidecar,
        };
        let store = ConfigStore::new(dir.to_path_buf(), identity);
        let snapshots = store.snapshot();
        let status = store.status();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        store.spawn(stop_rx).await.expect("config store");
        let log = tempfile::NamedTempFile::new().unwrap();
        let access_log = AccessLogger::new(AccessLogConfig {
            path: Some(log.path().to_path_buf()),
            encoding: AccessLogEncoding::Text,
            format: None,
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let proxy = Arc::new(Proxy::new(
            snapshots.clone(),
            access_log.clone(),
            metrics.clone(),
            "default",
            &labels,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_forward_proxy(
            listener,
            proxy,
            std::future::pending::<()>(),
        ));
        TestProxy {
            addr,
            log,
            access_log,
            metrics,
            snapshots,
            status,
            _stop: stop,
        }
    }

    /// `curl` through the proxy to httpbin: the status code it got.
    async fn curl(&self, path: &str, headers: &[&str]) -> u16 {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--proxy")
        .arg(format!("http://{}", self.addr))
        .arg(format!("http://httpbin.local{path}"));
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .output()
            .await
            .expect("prerequisite missing: curl (apt-get install curl)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {path}: {out:?}"))
    }

    /// The access log's lines so far.
    fn lines(&self) -> Vec<String> {
        self.access_log.flush(Duration::from_secs(2));
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until the published snapshot satisfies `done` (a watched edit has been applied).
    async fn until(&self, what: &str, done: impl Fn(&Snapshot) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(&self.snapshots.load()) {
            assert!(Instant::now() < deadline, "not applied in time: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    // Written aside and renamed: the watcher never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn telemetry(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_mesh_wide_and_back_on_for_one_workload() {
    let httpbin = Httpbin::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "se.yaml", &service_entry(httpbin.port));
    write(
        dir.path(),
        "mesh-telemetry.yaml",
        &telemetry(
            "istio-system",
            "mesh-default",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n",
        ),
    );
    write(
        dir.path(),
        "debug-telemetry.yaml",
        &telemetry(
            "default",
            "debug-logs",
            "  selector:\n    matchLabels: {app: debug}\n  accessLogging:\n  - disabled: false\n",
        ),
    );
    let quiet = TestProxy::start(dir.path(), "sleep").await;
    let debug = TestProxy::start(dir.path(), "debug").await;
    assert_eq!(quiet.curl("/status/418", &[]).await, 418);
    assert_eq!(debug.curl("/status/418", &[]).await, 418);
    let logged = debug.lines();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("\"GET /status/418 HTTP/1.1\" 418 ")
            && logged[0].contains("httpbin.local"),
        "{logged:?}"
    );
    assert_eq!(quiet.lines(), Vec::<String>::new(), "mesh-wide off");
    // Metrics are not access logging: the quiet proxy still counts its request.
    assert!(quiet
        .metrics
        .encode()
        .lines()
        .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"418\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_logs_only_errors() {
    let httpbin = Httpbin::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "se.yaml", &service_entry(httpbin.port));
    write(
        dir.path(),
        "telemetry.yaml",
        &telemetry(
            "default",
            "errors-only",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter:\n      expression: response.code >= 400\n",
        ),
    );
    let proxy = TestProxy::start(dir.path(), "sleep").await;
    for (path, code) in [
        ("/status/200", 200),
        ("/status/404", 404),
        ("/get", 200),
        ("/status/503", 503),
    ] {
        assert_eq!(proxy.curl(path, &[]).await, code, "{path}");
    }
    let lines = proxy.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("/status/404 HTTP/1.1\" 404 "),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("/status/503 HTTP/1.1\" 503 "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_disabled_tag_removed_and_tag_from_a_request_header() {
    let httpbin = Httpbin::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "se.yaml", &service_entry(httpbin.port));
    write(
        dir.path(),
        "telemetry.yaml",
        &telemetry(
            "default",
            "metrics",
            r#"  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_DURATION}
      disabled: true
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        x_team:
          value: request.headers['x-team']
        destination_service_name:
          value: request.host
"#,
        ),
    );
    let proxy = TestProxy::start(dir.path(), "sleep").await;
    assert_eq!(proxy.curl("/status/201", &["x-team: payments"]).await, 201);
    assert_eq!(proxy.curl("/status/202", &[]).await, 202);
    let text = proxy.metrics.encode();
    let count: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(count.len(), 2, "{count:#?}");
    let with_team = count
        .iter()
        .find(|l| l.contains("response_code=\"201\""))
        .expect("the 201's series");
    assert!(with_team.contains(",x_team=\"payments\""), "{with_team}");
    assert!(!with_team.contains("request_protocol="), "{with_team}");
    assert!(
        with_team.contains("destination_service_name=\"httpbin.local\""),
        "{with_team}"
    );
    // No header: the expression fails, the tag is `unknown` (a metric is never lost for it).
    let without = count
        .iter()
        .find(|l| l.contains("response_code=\"202\""))
        .expect("the 202's series");
    assert!(without.contains("x_team=\"unknown\""), "{without}");
    // Disabled: no duration series at all; the size histograms keep Istio's labels.
    assert!(
        !text.contains("istio_request_duration_milliseconds_bucket{"),
        "duration disabled"
    );
    let size = text
        .lines()
        .find(|l| {
            l.starts_with("istio_request_bytes_count{") && l.contains("response_code=\"201\"")
        })
        .expect("request size still reported");
    assert!(
        size.contains("request_protocol=\"http\"") && !size.contains("x_team"),
        "{size}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_edits_apply_live_and_a_bad_expression_keeps_the_last_good() {
    let httpbin = Httpbin::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "se.yaml", &service_entry(httpbin.port));
    let proxy = TestProxy::start(dir.path(), "sleep").await;
    assert_eq!(proxy.curl("/status/200", &[]).await, 200);
    assert_eq!(
        proxy.lines().len(),
        1,
        "no Telemetry: the mesh's access log"
    );

    // Added while running: only 5xx from now on.
    let good = telemetry(
        "default",
        "filter",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    filter:\n      expression: response.code >= 500\n",
    );
    write(dir.path(), "telemetry.yaml", &good);
    proxy
        .until("the Telemetry filter", |s| !s.telemetry.applied.is_empty())
        .await;
    assert_eq!(proxy.curl("/status/200", &[]).await, 200);
    assert_eq!(proxy.curl("/status/500", &[]).await, 500);
    let lines = proxy.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("/status/500"), "{lines:?}");

    // A bad expression: refused with file, line and field; the last good filter still acts.
    let generation = proxy.snapshots.load().generation;
    write(
        dir.path(),
        "telemetry.yaml",
        &good.replace("response.code >= 500", "response.code >=="),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let diagnostic = loop {
        let status = proxy.status.load();
        if let Some(d) = status
            .diagnostics
            .iter()
            .find(|d| d.contains("telemetry.yaml"))
        {
            break d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the bad expression was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        diagnostic.contains("telemetry.yaml:10:")
            && diagnostic.contains("Telemetry default/filter")
            && diagnostic.contains("spec.accessLogging[0].filter.expression")
            && diagnostic.contains("CEL"),
        "{diagnostic}"
    );
    assert!(proxy.snapshots.load().generation >= generation);
    assert_eq!(proxy.curl("/status/200", &[]).await, 200);
    assert_eq!(proxy.curl("/status/502", &[]).await, 502);
    let lines = proxy.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[2].contains("/status/502"), "{lines:?}");

    // Removed: back to the mesh's access log, every request.
    std::fs::remove_file(dir.path().join("telemetry.yaml")).unwrap();
    proxy
        .until("the Telemetry's removal", |s| {
            s.telemetry.applied.is_empty()
        })
        .await;
    assert_eq!(proxy.curl("/status/200", &[]).await, 200);
    assert_eq!(proxy.lines().len(), 4);
}

/// From a control plane (`--xds`): the Telemetry collection istiod serves is applied as the
/// folder's files are, and one with a bad expression is NACKed naming the field, its last good
/// version still acting.
#[test]
fn a_telemetry_collection_from_a_control_plane_applies_and_a_bad_one_is_nacked() {
    const COLLECTION: &str = "telemetry.istio.io/v1/Telemetry";
    let list = |expression: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [{{
  "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
  "metadata": {{"name": "errors", "namespace": "istio-system"}},
  "spec": {{"accessLogging": [{{"providers": [{{"name": "envoy"}}],
    "filter": {{"expression": "{expression}"}}}}]}}
}}]}}"#
        )
    };
    let mut store = ConfigStore::new_xds(
        "127.0.0.1:15010",
        [COLLECTION.to_string()],
        ProxyIdentity::default(),
    );
    store
        .apply_collection(COLLECTION, &list("response.code >= 400"))
        .unwrap();
    let filter = |store: &ConfigStore| {
        let snap = store.snapshot().load_full();
        match snap.telemetry.access_logging.client.decision() {
            sluice_model::telemetry_policy::AccessLogDecision::Envoy { filter: Some(f) } => {
                f.source().to_string()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(filter(&store), "response.code >= 400");
    let nack = store
        .apply_collection(COLLECTION, &list("response.code >="))
        .unwrap_err();
    assert!(
        nack.starts_with(
            "Telemetry istio-system/errors: spec.accessLogging[0].filter.expression: must be a \
             valid CEL expression: column 17: syntax error"
        ),
        "{nack}"
    );
    assert_eq!(filter(&store), "response.code >= 400");
}
