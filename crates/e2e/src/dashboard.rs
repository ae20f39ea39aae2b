//! The service-graph dashboard's outside programs: a real Prometheus (Debian package
//! `prometheus`) scraping the proxies' `:15090/stats/prometheus`, `sluice dashboard` in front of
//! it, and headless Chromium (Debian package `chromium`) loading the page.
//!
//! Everything runs inside one of the test's namespaces (usually a mesh hub, which reaches every
//! pod over the bridge); nothing listens outside the test's own addresses.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::curl::Curl;
use crate::netns::Netns;
use crate::prereq::{repo_root, sluice_bin, which};
use crate::process::{LogBook, Proc};
use crate::wait::eventually;

const INSTALL_ALL: &str = "scripts/install-test-deps.sh";

fn require(program: &str, package: &str, why: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!(
            "end-to-end test prerequisite missing: `{program}` (Debian package {package}, {why}): \
             install it with `apt-get install -y --no-install-recommends {package}` or run {INSTALL_ALL}"
        )
    })
}

/// `/usr/bin/prometheus`; panics naming the package when it is missing.
pub fn prometheus_bin() -> PathBuf {
    require(
        "prometheus",
        "prometheus",
        "the metrics server the dashboard reads",
    )
}

/// `chromium`; panics naming the package when it is missing.
pub fn chromium_bin() -> PathBuf {
    require(
        "chromium",
        "chromium",
        "the headless browser that loads the dashboard",
    )
}

/// One scrape target: a label (the pod's name) and the proxy's stats address.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub pod: String,
    pub addr: SocketAddr,
}

/// `prometheus.yml`: every target scraped at `/stats/prometheus` once a second, each with a
/// `pod` label.
pub fn prometheus_config(targets: &[ScrapeTarget]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
         scrape_configs:\n- job_name: sluice-proxies\n  metrics_path: /stats/prometheus\n  static_configs:\n",
    );
    for t in targets {
        out.push_str(&format!(
            "  - targets: ['{}']\n    labels:\n      pod: '{}'\n",
            t.addr, t.pod
        ));
    }
    out
}

/// A Prometheus server in a test namespace. Stopped on drop.
pub struct PrometheusServer {
    proc: Proc,
    pub addr: SocketAddrV4,
    pub config: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl PrometheusServer {
    /// Writes the config and the TSDB under `dir/prometheus/`, starts `prometheus` in `ns`
    /// listening on `listen`, and waits (20 s) for `/-/ready`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        logs: &LogBook,
        listen: SocketAddrV4,
        targets: &[ScrapeTarget],
    ) -> PrometheusServer {
        let bin = prometheus_bin();
        let home = dir.join("prometheus");
        std::fs::create_dir_all(home.join("data"))
            .unwrap_or_else(|e| panic!("create {}: {e}", home.display()));
        let config = home.join("prometheus.yml");
        std::fs::write(&config, prometheus_config(targets))
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let mut cmd = ns.cmd(&bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                home.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--web.enable-lifecycle")
            .current_dir(&home);
        let proc = Proc::spawn("prometheus", cmd, dir, logs, None, libc::SIGTERM);
        let mut server = PrometheusServer {
            proc,
            addr: listen,
            config,
            ns: ns.name().to_string(),
            dir: dir.to_path_buf(),
        };
        server.wait_ready(logs);
        server
    }

    fn wait_ready(&mut self, logs: &LogBook) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get("/-/ready");
            if r.0 == 200 {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "prometheus exited ({status}) before it was ready\n{}",
                    logs.dump(40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus on {} not ready within 20 s: {:?}\n{}",
                    self.addr,
                    r,
                    logs.dump(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET `path` on the server from its namespace: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = Curl::in_netns(&self.ns, &self.dir, &format!("{}{path}", self.url()))
            .max_time(5.0)
            .run();
        (r.status, r.body)
    }

    /// An instant query through the HTTP API; the `data.result` array.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let r = Curl::in_netns(&self.ns, &self.dir, &format!("{}/api/v1/query", self.url()))
            .max_time(5.0)
            .arg("-G")
            .arg("--data-urlencode")
            .arg(&format!("query={promql}"))
            .run();
        if r.status != 200 {
            return Err(format!("query {promql}: {r}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&r.body).map_err(|e| format!("query {promql}: {e}: {r}"))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until every target is up (`up == 1`), i.e. scraped at least once.
    pub fn wait_targets_up(&self, n: usize, timeout: Duration) {
        eventually(
            &format!("Prometheus scrapes all {n} proxies"),
            timeout,
            || {
                let up = self.query("up == 1")?;
                if up.len() >= n {
                    Ok(())
                } else {
                    let (_, targets) = self.get("/api/v1/targets");
                    Err(format!("{} of {n} up; targets: {targets}", up.len()))
                }
            },
        );
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// `sluice dashboard` in a test namespace. Stopped on drop.
pub struct DashboardServer {
    proc: Proc,
    pub addr: SocketAddr,
    ns: String,
    dir: PathBuf,
}

impl DashboardServer {
    /// Runs `sluice dashboard --prometheus URL --listen ADDR --refresh REFRESH` in `ns` and waits
    /// (10 s) for `/healthz`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        logs: &LogBook,
        prometheus: &str,
        listen: SocketAddr,
        refresh: &str,
    ) -> DashboardServer {
        let mut cmd = ns.cmd(sluice_bin());
        cmd.args(["dashboard", "--prometheus", prometheus, "--listen"])
            .arg(listen.to_string())
            .args(["--refresh", refresh]);
        let proc = Proc::spawn("dashboard", cmd, dir, logs, None, libc::SIGTERM);
        let mut d = DashboardServer {
            proc,
            addr: listen,
            ns: ns.name().to_string(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if d.get("/healthz").0 == 200 {
                break;
            }
            if let Some(status) = d.proc.exited() {
                panic!("sluice dashboard exited ({status})\n{}", logs.dump(40));
            }
            assert!(
                Instant::now() < deadline,
                "sluice dashboard not answering on {listen} within 10 s\n{}",
                logs.dump(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// `http://<addr>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// GET `path` from the dashboard's namespace: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = Curl::in_netns(&self.ns, &self.dir, &format!("http://{}{path}", self.addr))
            .max_time(10.0)
            .run();
        (r.status, r.body)
    }

    /// `/api/graph?window=…` as JSON.
    pub fn graph(&self, window: &str) -> Result<serde_json::Value, String> {
        let (status, body) = self.get(&format!("/api/graph?window={window}"));
        if status != 200 {
            return Err(format!("/api/graph: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/api/graph: {e}: {body}"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.proc.stderr_path()).unwrap_or_default()
    }
}

/// Node ids of a graph answer.
pub fn node_ids(graph: &serde_json::Value) -> Vec<String> {
    graph["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

/// The edge with this id, if the graph has it.
pub fn edge<'a>(graph: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    graph["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["id"] == id)
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Headless Chromium in a test namespace (as root, so `--no-sandbox`).
pub struct Chromium {
    bin: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl Chromium {
    /// Checks that `chromium` is installed (panics naming the package otherwise).
    pub fn new(ns: &Netns, dir: &Path) -> Chromium {
        Chromium {
            bin: chromium_bin(),
            ns: ns.name().to_string(),
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, budget_ms: u32, extra: &[String], url: &str) -> (Command, PathBuf) {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let profile = self.dir.join(format!("chromium-{n}"));
        std::fs::create_dir_all(&profile)
            .unwrap_or_else(|e| panic!("create {}: {e}", profile.display()));
        let mut c = Command::new(which("ip").unwrap_or_else(|| PathBuf::from("ip")));
        c.args(["netns", "exec", &self.ns]).arg(&self.bin).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            "--no-proxy-server",
        ]);
        c.arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(extra)
            .arg(url)
            .env("HOME", &profile)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .current_dir(&profile)
            .stdin(Stdio::null());
        (c, profile)
    }

    /// Runs chromium to completion (killed after 40 s); returns (stdout, stderr).
    fn run(&self, mut cmd: Command, what: &str) -> (String, String) {
        let out_path = self.dir.join(format!(
            "chromium-{}.out",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let err_path = out_path.with_extension("err");
        let out = std::fs::File::create(&out_path).expect("chromium stdout file");
        let err = std::fs::File::create(&err_path).expect("chromium stderr file");
        let mut child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium ({what}): {e}"));
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for chromium") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium ({what}) did not finish within 40 s; stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            status.success(),
            "chromium ({what}) failed ({status}); stderr:\n{stderr}"
        );
        (stdout, stderr)
    }

    /// `--dump-dom`: the page's DOM after `budget_ms` of virtual time (scripts, fetches and
    /// timers run; the virtual clock waits for network requests).
    pub fn dump_dom(&self, url: &str, budget_ms: u32) -> String {
        let (cmd, _) = self.command(budget_ms, &["--dump-dom".to_string()], url);
        let (dom, stderr) = self.run(cmd, &format!("--dump-dom {url}"));
        assert!(
            dom.contains("</html>"),
            "chromium --dump-dom {url} printed no document; stderr:\n{stderr}"
        );
        dom
    }

    /// `--screenshot=FILE --window-size=W,H` after `budget_ms` of virtual time.
    pub fn screenshot(&self, url: &str, file: &Path, size: (u32, u32), budget_ms: u32) {
        let _ = std::fs::remove_file(file);
        let (cmd, _) = self.command(
            budget_ms,
            &[
                format!("--screenshot={}", file.display()),
                format!("--window-size={},{}", size.0, size.1),
            ],
            url,
        );
        let (_, stderr) = self.run(cmd, &format!("--screenshot {url}"));
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 1000,
            "chromium wrote no screenshot at {} ({len} bytes); stderr:\n{stderr}",
            file.display()
        );
    }
}

/// `<target>/e2e-artifacts/` (created): the target directory this test binary was built in
/// (`target/<profile>/deps/<test>` → `target`), or `<repo>/target`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .nth(3)
                .filter(|t| t.join("debug").is_dir() || t.join("release").is_dir())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("e2e-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Every `data-<attr>="…"` value in an HTML/SVG dump, in document order.
pub fn data_values(dom: &str, attr: &str) -> Vec<String> {
    let needle = format!("data-{attr}=\"");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        if let Some(end) = rest.find('"') {
            out.push(html_unescape(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

/// The opening tag of the element whose `data-<attr>` is `value`, if any.
pub fn element_with<'a>(dom: &'a str, attr: &str, value: &str) -> Option<&'a str> {
    let needle = format!("data-{attr}=\"{}\"", html_escape(value));
    let i = dom.find(&needle)?;
    let start = dom[..i].rfind('<')?;
    let end = i + dom[i..].find('>')?;
    Some(&dom[start..=end])
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_unescape(s: &str) -> String {
    s.replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_target() {
        let c = prometheus_config(&[
            ScrapeTarget {
                pod: "client".into(),
                addr: "10.234.1.40:15090".parse().unwrap(),
            },
            ScrapeTarget {
                pod: "customer-v1".into(),
                addr: "10.234.1.41:15090".parse().unwrap(),
            },
        ]);
        assert!(c.contains("scrape_interval: 1s"));
        assert!(c.contains("metrics_path: /stats/prometheus"));
        assert!(
            c.contains("- targets: ['10.234.1.41:15090']\n    labels:\n      pod: 'customer-v1'")
        );
    }

    #[test]
    fn reads_data_attributes_from_a_dom_dump() {
        let dom = r#"<g data-node="workload:t/a-v1" data-kind="workload"></g><g data-edge="workload:t/a-v1-&gt;service:b.t.svc.cluster.local" data-mtls="false">"#;
        assert_eq!(data_values(dom, "node"), vec!["workload:t/a-v1"]);
        assert_eq!(
            data_values(dom, "edge"),
            vec!["workload:t/a-v1->service:b.t.svc.cluster.local"]
        );
        let e = element_with(
            dom,
            "edge",
            "workload:t/a-v1->service:b.t.svc.cluster.local",
        )
        .unwrap();
        assert!(e.contains("data-mtls=\"false\""), "{e}");
    }
}
