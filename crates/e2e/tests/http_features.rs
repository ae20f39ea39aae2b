//! End-to-end proof of the VirtualService HTTP features (reference/istio-api.md §1.2, §2.2–2.4) with
//! real curl and httpbin: fault injection, redirect, rewrite, header operations, direct response,
//! retries, mirroring, weighted split, HTTP/2 prior knowledge, and the NC / NR failures.
//!
//! Every test starts from the same base: a REGISTRY_ONLY mesh with the access log on stdout and the
//! `httpbin-ext` ServiceEntry (httpbin.org, resolution DNS, port 80 HTTP), plus one VirtualService.
//! The configuration is written before the sidecar starts, so no reload has to be waited for.
//!
//! Some scenarios need more upstreams than the harness provides (a mirror target, two backends of a
//! weighted split). They get extra addresses in the test's own external namespace (`10.234.N.20x`)
//! serving a tiny Python HTTP server that answers every request with a fixed status and body and
//! prints each request it receives as one JSON line; the ServiceEntries for them use
//! `resolution: STATIC` endpoints, so they need no DNS records.

use std::net::Ipv4Addr;
use std::time::Duration;

use sluice_e2e::config::{mesh_configmap, SE_HTTPBIN_EXT};
use sluice_e2e::env::HTTPBIN;
use sluice_e2e::prereq::tools;
use sluice_e2e::process::Proc;
use sluice_e2e::{eventually, AccessLogEntry, SidecarOpts, TestEnv};

const MESH: &str = "istio-configmap.yaml";

/// A fresh environment with the base configuration (REGISTRY_ONLY + the httpbin.org ServiceEntry)
/// and `vs` as the VirtualService; the sidecar is not started yet.
fn base_env(test: &str, vs: &str) -> TestEnv {
    let env = TestEnv::new(test);
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.config.write("httpbin-vs.yaml", vs);
    env
}

/// A VirtualService for httpbin.org whose `http:` list is `http` (YAML, indented by two spaces).
fn vs_httpbin(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin.org
  http:
{http}"
    )
}

/// A ServiceEntry for `host` (port 80, HTTP) whose only endpoint is `ip`.
fn se_static(name: &str, host: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
spec:
  hosts:
  - {host}
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: {ip}
"
    )
}

fn http_line<'a>(method: &'a str, path: &'a str) -> impl Fn(&AccessLogEntry) -> bool + 'a {
    move |e| e.method == method && e.path == path && e.authority == HTTPBIN
}

/// How many times httpbin on httpbin.org:80 logged `GET <path_and_query>` (gunicorn's access log).
fn httpbin_hits(env: &TestEnv, path_and_query: &str) -> usize {
    env.server_log("httpbin-http")
        .matches(&format!("\"GET {path_and_query} HTTP/1.1\""))
        .count()
}

/// Sends `marker` (a path that goes straight to httpbin) through the sidecar and waits until
/// httpbin has logged it: every request answered before it has been logged by then too.
fn sync_httpbin_log(env: &TestEnv, marker: &str) {
    env.curl(&format!("http://httpbin.org{marker}"))
        .run()
        .expect_status(204);
    eventually(
        &format!("httpbin logs {marker}"),
        Duration::from_secs(5),
        || {
            if httpbin_hits(env, marker) > 0 {
                Ok(())
            } else {
                Err(env.server_log("httpbin-http"))
            }
        },
    );
}

/// Adds `10.234.<subnet>.<last>` to the external namespace's veth and returns it.
fn add_ext_address(env: &TestEnv, last: u8) -> Ipv4Addr {
    let ip = Ipv4Addr::new(10, 234, env.hosts.subnet, last);
    let addrs = env.ext.ip(&["-o", "-4", "addr", "show"]);
    let needle = format!(" {}/24 ", env.hosts.dns);
    let dev = addrs
        .lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .unwrap_or_else(|| {
            panic!(
                "no interface with {} in {}:\n{addrs}",
                env.hosts.dns,
                env.ext.name()
            )
        });
    env.ext
        .ip(&["addr", "add", &format!("{ip}/32"), "dev", &dev]);
    ip
}

const TINY_SERVER: &str = r#"
import http.server, json, sys

ip, port, status, body = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(n) if n else b""
        if self.path != "/__ready":
            print(json.dumps({"method": self.command, "path": self.path,
                              "headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": data.decode("utf-8", "replace")}), flush=True)
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
"#;

/// A tiny HTTP server in the external namespace: answers every request with a fixed status and
/// body, and prints each request as a JSON line (`method`, `path`, `headers`, `body`).
struct TinyServer {
    ip: Ipv4Addr,
    proc: Proc,
}

impl TinyServer {
    fn start(env: &TestEnv, label: &str, ip: Ipv4Addr, status: u16, body: &str) -> TinyServer {
        let script = env.dir().join("tiny_server.py");
        if !script.exists() {
            std::fs::write(&script, TINY_SERVER)
                .unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
        }
        let mut cmd = env.ext.cmd(tools().venv.join("bin/python"));
        cmd.arg(&script)
            .arg(ip.to_string())
            .arg("80")
            .arg(status.to_string())
            .arg(body)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let mut proc = Proc::spawn(label, cmd, env.dir(), &env.logs, None, libc::SIGTERM);
        let want = status.to_string();
        let mut last = String::new();
        for _ in 0..100 {
            let out = env
                .ext
                .cmd(&tools().curl)
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--max-time", "2", "--noproxy", "*"])
                .arg(format!("http://{ip}/__ready"))
                .output();
            if let Ok(o) = &out {
                last = String::from_utf8_lossy(&o.stdout).into_owned();
                if last == want {
                    return TinyServer { ip, proc };
                }
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "{label} exited ({status}) while starting:\n{}",
                    env.logs.dump(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{label} on {ip}:80 did not answer {want} within 10 s (last: {last:?})\n{}",
            env.logs.dump(40)
        );
    }

    /// The requests received so far.
    fn requests(&self) -> Vec<serde_json::Value> {
        self.proc
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Abort at 100 % answers the configured status with Envoy's body and flag FI without contacting
/// httpbin; a 1 s delay at 100 % holds the request for at least 1 s and then it succeeds (flag DI).
#[test]
fn fault_abort_and_delay() {
    let vs = vs_httpbin(
        "  - match:
    - uri:
        prefix: /status/200
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: httpbin.org
  - match:
    - uri:
        prefix: /get
    fault:
      delay:
        fixedDelay: 1s
        percentage:
          value: 100
    route:
    - destination:
        host: httpbin.org
  - route:
    - destination:
        host: httpbin.org
",
    );
    let mut env = base_env("fault_abort_and_delay", &vs);
    env.start_sidecar(SidecarOpts::captured());

    // Abort: httpbin would answer 200 here.
    let r = env.curl("http://httpbin.org/status/200?fault=abort").run();
    r.expect_status(418);
    assert_eq!(r.body, "fault filter abort", "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log(
        "GET /status/200 aborted",
        http_line("GET", "/status/200?fault=abort"),
    );
    assert_eq!(e.response_code, 418, "{}", e.raw);
    assert_eq!(e.response_flags, "FI", "{}", e.raw);
    assert_eq!(e.response_code_details, "fault_filter_abort", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert!(e.raw.contains(" 418 FI fault_filter_abort "), "{}", e.raw);

    // Delay: the request succeeds, but only after the delay.
    let r = env.curl("http://httpbin.org/get?fault=delay").run();
    r.expect_status(200);
    assert_eq!(r.json()["url"], "http://httpbin.org/get?fault=delay", "{r}");
    assert!(
        (1.0..2.5).contains(&r.time_total),
        "the request is delayed by about 1 s:\n{r}"
    );
    let delayed = env.wait_for_log("GET /get delayed", http_line("GET", "/get?fault=delay"));
    let e = &delayed;
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);
    assert_eq!(
        e.upstream_host,
        format!("{}:80", env.hosts.httpbin),
        "{}",
        e.raw
    );
    let duration: u64 = e.duration.parse().unwrap_or(0);
    assert!(duration >= 1000, "%DURATION% includes the delay: {}", e.raw);

    // Other paths are neither aborted nor delayed, and the aborted request never reached httpbin.
    let r = env.curl("http://httpbin.org/status/204?fault=none").run();
    r.expect_status(204);
    assert!(r.time_total < 1.0, "{r}");
    sync_httpbin_log(&env, "/status/204?fault=sync");
    assert_eq!(
        httpbin_hits(&env, "/status/200?fault=abort"),
        0,
        "an aborted request must not reach httpbin:\n{}",
        env.server_log("httpbin-http")
    );

    // The delayed request is flagged DI (Envoy DelayInjected).
    assert_eq!(
        delayed.response_flags, "DI",
        "a delayed request carries flag DI: {}",
        delayed.raw
    );
}

/// `redirect: {uri: /status/200, redirectCode: 302}` answers 302 with the new Location (port 80
/// dropped) without contacting httpbin; curl -L then follows it through the sidecar to a 200.
#[test]
fn redirect() {
    let vs = vs_httpbin(
        "  - match:
    - uri:
        prefix: /old
    redirect:
      uri: /status/200
      redirectCode: 302
  - route:
    - destination:
        host: httpbin.org
",
    );
    let mut env = base_env("redirect", &vs);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/old/page").run();
    r.expect_status(302);
    assert_eq!(
        r.header("location"),
        Some("http://httpbin.org/status/200"),
        "{r}"
    );
    assert!(r.status_line.starts_with("HTTP/1.1 302"), "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log("GET /old/page 302", http_line("GET", "/old/page"));
    assert_eq!(e.response_code, 302, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.response_code_details, "direct_response", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);

    // Following the redirect: the new path does not match /old, so it reaches httpbin.
    let r = env.curl("http://httpbin.org/old/other").arg("-L").run();
    r.expect_status(200);
    env.wait_for_log("GET /status/200 after the redirect", |e| {
        http_line("GET", "/status/200")(e) && e.response_code == 200
    });
    sync_httpbin_log(&env, "/status/204?redirect=sync");
    assert_eq!(
        httpbin_hits(&env, "/old/page") + httpbin_hits(&env, "/old/other"),
        0,
        "the redirected paths must not reach httpbin:\n{}",
        env.server_log("httpbin-http")
    );
    assert_eq!(httpbin_hits(&env, "/status/200"), 1);
}

/// `rewrite: {uri: /anything/new}` on a `prefix: /old` match replaces the prefix; httpbin sees the
/// rewritten path and `X-Envoy-Original-Path`, and the access log shows the original path.
#[test]
fn rewrite_and_original_path() {
    let vs = vs_httpbin(
        "  - match:
    - uri:
        prefix: /old
    rewrite:
      uri: /anything/new
    route:
    - destination:
        host: httpbin.org
  - route:
    - destination:
        host: httpbin.org
",
    );
    let mut env = base_env("rewrite_and_original_path", &vs);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/old/page?x=1").run();
    r.expect_status(200);
    let j = r.json();
    assert_eq!(j["url"], "http://httpbin.org/anything/new/page?x=1", "{r}");
    assert_eq!(j["args"]["x"], "1", "{r}");
    assert_eq!(
        r.echoed_header("X-Envoy-Original-Path").as_deref(),
        Some("/old/page?x=1"),
        "{r}"
    );
    assert_eq!(r.echoed_header("Host").as_deref(), Some(HTTPBIN), "{r}");

    let e = env.wait_for_log(
        "GET /old/page (original path)",
        http_line("GET", "/old/page?x=1"),
    );
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);
    assert!(
        e.raw.contains("\"GET /old/page?x=1 HTTP/1.1\" 200 "),
        "{}",
        e.raw
    );
    sync_httpbin_log(&env, "/status/204?rewrite=sync");
    assert_eq!(httpbin_hits(&env, "/anything/new/page?x=1"), 1);
    assert_eq!(httpbin_hits(&env, "/old/page?x=1"), 0);

    // Without the prefix, nothing is rewritten and no original path is sent.
    let r = env.curl("http://httpbin.org/anything/plain").run();
    r.expect_status(200);
    assert_eq!(r.json()["url"], "http://httpbin.org/anything/plain", "{r}");
    assert_eq!(r.echoed_header("X-Envoy-Original-Path"), None, "{r}");
}

/// Route-level `headers`: request set (overwrites), add (appends), remove; response set
/// (overwrites httpbin's own value), add, remove.
#[test]
fn header_operations() {
    let vs = vs_httpbin(
        "  - headers:
      request:
        set:
          x-set: set-by-route
        add:
          x-add: added-by-route
        remove:
        - x-remove-me
      response:
        set:
          x-resp-set: resp-by-route
          x-from-upstream: overwritten
        add:
          x-resp-add: added-to-response
        remove:
        - access-control-allow-credentials
    route:
    - destination:
        host: httpbin.org
",
    );
    let mut env = base_env("header_operations", &vs);
    env.start_sidecar(SidecarOpts::captured());

    let r = env
        .curl("http://httpbin.org/headers")
        .header("x-set: from-client")
        .header("x-add: from-client")
        .header("x-remove-me: please")
        .header("x-untouched: kept")
        .run();
    r.expect_status(200);
    assert_eq!(
        r.echoed_header("X-Set").as_deref(),
        Some("set-by-route"),
        "{r}"
    );
    let added = r
        .echoed_header("X-Add")
        .unwrap_or_else(|| panic!("no X-Add upstream:\n{r}"));
    let added: Vec<&str> = added.split(',').map(str::trim).collect();
    assert_eq!(added, ["from-client", "added-by-route"], "{r}");
    assert_eq!(r.echoed_header("X-Remove-Me"), None, "{r}");
    assert_eq!(
        r.echoed_header("X-Untouched").as_deref(),
        Some("kept"),
        "{r}"
    );

    // Response side, on a response that sets x-from-upstream itself.
    let r = env
        .curl("http://httpbin.org/response-headers?x-from-upstream=upstream")
        .run();
    r.expect_status(200);
    assert_eq!(r.header("x-resp-set"), Some("resp-by-route"), "{r}");
    assert_eq!(r.header("x-resp-add"), Some("added-to-response"), "{r}");
    let from_upstream: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "x-from-upstream")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        from_upstream,
        ["overwritten"],
        "response set replaces the upstream's value:\n{r}"
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "httpbin's other CORS header is kept:\n{r}"
    );
    assert_eq!(
        r.header("access-control-allow-credentials"),
        None,
        "removed from the response:\n{r}"
    );
    // The body is httpbin's own view of its headers, before the sidecar changed them.
    assert_eq!(r.json()["x-from-upstream"], "upstream", "{r}");
}

/// `directResponse: {status: 503, body: {string: …}}` answers exactly that, from the sidecar.
#[test]
fn direct_response() {
    let vs = vs_httpbin(
        "  - match:
    - uri:
        prefix: /status/
    route:
    - destination:
        host: httpbin.org
  - directResponse:
      status: 503
      body:
        string: \"down for maintenance\"
",
    );
    let mut env = base_env("direct_response", &vs);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/get?direct=1").run();
    r.expect_status(503);
    assert_eq!(r.body, "down for maintenance", "{r}");
    assert_eq!(r.header("content-length"), Some("20"), "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log(
        "GET /get 503 direct_response",
        http_line("GET", "/get?direct=1"),
    );
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.response_code_details, "direct_response", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert!(e.raw.contains(" 503 - direct_response "), "{}", e.raw);

    sync_httpbin_log(&env, "/status/204?direct=sync");
    assert_eq!(
        httpbin_hits(&env, "/get?direct=1"),
        0,
        "a direct response must not contact httpbin:\n{}",
        env.server_log("httpbin-http")
    );
}

/// `retries: {attempts: 2, retryOn: 5xx}` sends a 503-answering request three times and returns
/// the last 503 with flag URX; the default policy (no `retries`) does not retry a 503.
#[test]
fn retries() {
    let vs = vs_httpbin(
        "  - match:
    - headers:
        x-retry:
          exact: \"on\"
    retries:
      attempts: 2
      retryOn: 5xx
    route:
    - destination:
        host: httpbin.org
  - route:
    - destination:
        host: httpbin.org
",
    );
    let mut env = base_env("retries", &vs);
    env.start_sidecar(SidecarOpts::captured());

    let r = env
        .curl("http://httpbin.org/status/503?policy=5xx")
        .header("x-retry: on")
        .run();
    r.expect_status(503);
    let r = env
        .curl("http://httpbin.org/status/503?policy=default")
        .run();
    r.expect_status(503);

    sync_httpbin_log(&env, "/status/204?retries=sync");
    assert_eq!(
        (
            httpbin_hits(&env, "/status/503?policy=5xx"),
            httpbin_hits(&env, "/status/503?policy=default")
        ),
        (3, 1),
        "httpbin should see 1 + 2 attempts with `retryOn: 5xx` and 1 with the default policy:\n{}",
        env.server_log("httpbin-http")
    );

    let e = env.wait_for_log(
        "GET /status/503 with the default policy",
        http_line("GET", "/status/503?policy=default"),
    );
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);

    let e = env.wait_for_log(
        "GET /status/503 with retries",
        http_line("GET", "/status/503?policy=5xx"),
    );
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);
    assert!(
        e.response_flags.split(',').any(|f| f == "URX"),
        "retries exhausted on a retriable 503: flag URX expected (Envoy UpstreamRetryLimitExceeded): {}",
        e.raw
    );
}

/// `mirror: {host: mirror.test}` at 100 %: every request also reaches the mirror (with the
/// original Host, as Istio ≥ 1.28 sends it), while the client gets httpbin's response.
#[test]
fn mirror() {
    let mut env = base_env(
        "mirror",
        &vs_httpbin(
            "  - route:
    - destination:
        host: httpbin.org
    mirror:
      host: mirror.test
    mirrorPercentage:
      value: 100
",
        ),
    );
    let mirror_ip = add_ext_address(&env, 201);
    let mirror = TinyServer::start(&env, "mirror", mirror_ip, 418, "from the mirror");
    env.config.write(
        "mirror-se.yaml",
        &se_static("mirror", "mirror.test", mirror.ip),
    );
    env.start_sidecar(SidecarOpts::captured());

    for i in 0..3 {
        let r = env
            .curl(&format!("http://httpbin.org/anything/mirrored?n={i}"))
            .run();
        r.expect_status(200);
        assert_eq!(
            r.json()["url"],
            format!("http://httpbin.org/anything/mirrored?n={i}"),
            "the client gets the primary's (httpbin's) response:\n{r}"
        );
        let e = env.wait_for_log("GET /anything/mirrored", |e| {
            http_line("GET", &format!("/anything/mirrored?n={i}"))(e)
        });
        assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);
        assert_eq!(e.response_code, 200, "{}", e.raw);
    }
    // A POST body is mirrored too.
    let r = env
        .curl("http://httpbin.org/anything/mirrored?n=post")
        .header("content-type: text/plain")
        .arg("--data-binary")
        .arg("mirrored body")
        .run();
    r.expect_status(200);
    assert_eq!(r.json()["data"], "mirrored body", "{r}");

    let seen = eventually(
        "the mirror receives all 4 requests",
        Duration::from_secs(5),
        || {
            let reqs = mirror.requests();
            if reqs.len() >= 4 {
                Ok(reqs)
            } else {
                Err(format!("{} so far: {reqs:?}", reqs.len()))
            }
        },
    );
    let mut paths: Vec<String> = seen
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?")
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "GET /anything/mirrored?n=0",
            "GET /anything/mirrored?n=1",
            "GET /anything/mirrored?n=2",
            "POST /anything/mirrored?n=post",
        ],
        "{seen:?}"
    );
    for r in &seen {
        assert_eq!(r["headers"]["host"], HTTPBIN, "mirrored Host: {r}");
    }
    let post = seen
        .iter()
        .find(|r| r["method"] == "POST")
        .expect("the POST");
    assert_eq!(post["body"], "mirrored body", "{post}");
}

/// An 80/20 weighted split between two hosts with different backends: over 200 requests (one curl,
/// one keep-alive connection) each backend's share is within ±10 percentage points.
#[test]
fn weighted_split() {
    let mut env = base_env(
        "weighted_split",
        &vs_httpbin(
            "  - route:
    - destination:
        host: backend-a.test
      weight: 80
    - destination:
        host: backend-b.test
      weight: 20
",
        ),
    );
    let a_ip = add_ext_address(&env, 202);
    let b_ip = add_ext_address(&env, 203);
    let a = TinyServer::start(&env, "backend-a", a_ip, 200, "a");
    let b = TinyServer::start(&env, "backend-b", b_ip, 200, "b");
    env.config.write(
        "backend-a.yaml",
        &se_static("backend-a", "backend-a.test", a.ip),
    );
    env.config.write(
        "backend-b.yaml",
        &se_static("backend-b", "backend-b.test", b.ip),
    );
    env.start_sidecar(SidecarOpts::captured());

    const N: usize = 200;
    let out = env
        .pod
        .cmd(&tools().curl)
        .args(["-sS", "--max-time", "60", "-w", " %{http_code}\\n"])
        .arg(format!("http://httpbin.org/split?n=[1-{N}]"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        out.status.success() && lines.len() == N,
        "curl exit {}, {} lines; stderr: {}\n{stdout}",
        out.status,
        lines.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |want: &str| lines.iter().filter(|l| **l == want).count();
    let (to_a, to_b) = (count("a 200"), count("b 200"));
    assert_eq!(to_a + to_b, N, "every answer is 200 from a or b:\n{stdout}");
    assert!(
        (140..=180).contains(&to_a),
        "80/20 split: {to_a} to a, {to_b} to b of {N}"
    );
    eprintln!("weighted split: {to_a} to backend-a, {to_b} to backend-b");

    // The backends agree with what the client saw.
    assert_eq!(
        (a.requests().len(), b.requests().len()),
        (to_a, to_b),
        "requests logged by the backends"
    );
    let e = env.wait_for_log("GET /split?n=1", http_line("GET", "/split?n=1"));
    assert!(
        ["outbound|80||backend-a.test", "outbound|80||backend-b.test"]
            .contains(&e.upstream_cluster.as_str()),
        "{}",
        e.raw
    );
}

/// h2c with prior knowledge from the app: the sidecar speaks HTTP/2 to curl and HTTP/1.1 to httpbin.
#[test]
fn http2_prior_knowledge() {
    let mut env = base_env(
        "http2_prior_knowledge",
        &vs_httpbin(
            "  - route:
    - destination:
        host: httpbin.org
",
        ),
    );
    env.start_sidecar(SidecarOpts::captured());

    let r = env
        .curl("http://httpbin.org/headers?h2=1")
        .arg("--http2-prior-knowledge")
        .run();
    r.expect_status(200);
    assert!(r.status_line.starts_with("HTTP/2 200"), "{r}");
    assert_eq!(r.echoed_header("Host").as_deref(), Some(HTTPBIN), "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log(
        "GET /headers over HTTP/2",
        http_line("GET", "/headers?h2=1"),
    );
    assert_eq!(e.protocol, "HTTP/2", "{}", e.raw);
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);
    assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);

    // A POST with a body over the same protocol.
    let r = env
        .curl("http://httpbin.org/post?h2=2")
        .arg("--http2-prior-knowledge")
        .header("content-type: text/plain")
        .arg("--data-binary")
        .arg("hello over h2")
        .run();
    r.expect_status(200);
    assert_eq!(r.json()["data"], "hello over h2", "{r}");
    assert!(r.status_line.starts_with("HTTP/2 200"), "{r}");
}

/// A route to a subset that no DestinationRule defines: 503 with flag NC (`cluster_not_found`).
#[test]
fn unknown_subset_is_503_nc() {
    let mut env = base_env(
        "unknown_subset_is_503_nc",
        &vs_httpbin(
            "  - route:
    - destination:
        host: httpbin.org
        subset: v1
",
        ),
    );
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/headers?subset=v1").run();
    r.expect_status(503);
    assert_eq!(r.body, "", "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log(
        "GET /headers 503 NC",
        http_line("GET", "/headers?subset=v1"),
    );
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(e.response_flags, "NC", "{}", e.raw);
    assert_eq!(e.response_code_details, "cluster_not_found", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert!(e.raw.contains(" 503 NC cluster_not_found "), "{}", e.raw);
}

/// A VirtualService whose only route matches `/status/`: any other path is 404 NR.
#[test]
fn no_route_is_404_nr() {
    let mut env = base_env(
        "no_route_is_404_nr",
        &vs_httpbin(
            "  - match:
    - uri:
        prefix: /status/
    route:
    - destination:
        host: httpbin.org
",
        ),
    );
    env.start_sidecar(SidecarOpts::captured());

    env.curl("http://httpbin.org/status/204")
        .run()
        .expect_status(204);
    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(404);
    assert_eq!(r.body, "", "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log("GET /headers 404 NR", http_line("GET", "/headers"));
    assert_eq!(e.response_code, 404, "{}", e.raw);
    assert_eq!(e.response_flags, "NR", "{}", e.raw);
    assert_eq!(e.response_code_details, "route_not_found", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert!(e.raw.contains(" 404 NR route_not_found "), "{}", e.raw);
}
