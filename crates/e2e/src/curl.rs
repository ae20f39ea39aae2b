//! curl as the application: `ip netns exec <pod> curl …`, with the result taken apart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::prereq::tools;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A curl invocation being built. Defaults: `-sS`, `--connect-timeout 5`, `--max-time 20`,
/// `--cacert <test CA>`, no proxy unless [`Curl::proxy`] is given.
pub struct Curl {
    ns: String,
    url: String,
    args: Vec<String>,
    workdir: PathBuf,
    cacert: Option<PathBuf>,
    proxy: Option<String>,
    max_time: f64,
}

impl Curl {
    pub fn new(ns: &Netns, workdir: &Path, url: &str) -> Curl {
        Curl::in_netns(ns.name(), workdir, url)
    }

    /// Like [`Curl::new`], for a namespace known by name.
    pub fn in_netns(ns: &str, workdir: &Path, url: &str) -> Curl {
        Curl {
            ns: ns.to_string(),
            url: url.to_string(),
            args: Vec::new(),
            workdir: workdir.to_path_buf(),
            cacert: None,
            proxy: None,
            max_time: 20.0,
        }
    }

    /// `-I` (HEAD), as the seeds use it.
    pub fn head(self) -> Curl {
        self.arg("-I")
    }

    /// Trust this CA file (`--cacert`).
    pub fn cacert(mut self, path: &Path) -> Curl {
        self.cacert = Some(path.to_path_buf());
        self
    }

    /// Trust no particular CA file (drops an earlier [`Curl::cacert`]; the system store applies).
    pub fn no_cacert(mut self) -> Curl {
        self.cacert = None;
        self
    }

    /// `--resolve host:port:ip`: connect to `ip` for `host:port` without asking DNS (curl still
    /// sends `host` as SNI and `Host`).
    pub fn resolve(self, host: &str, port: u16, ip: std::net::Ipv4Addr) -> Curl {
        self.arg("--resolve").arg(&format!("{host}:{port}:{ip}"))
    }

    /// `--cert cert --key key`: a client certificate for mutual TLS.
    pub fn client_cert(self, cert: &Path, key: &Path) -> Curl {
        self.arg("--cert")
            .arg(&cert.to_string_lossy())
            .arg("--key")
            .arg(&key.to_string_lossy())
    }

    /// `-k`: do not verify the server's certificate (as the seeds' `curl -k`).
    pub fn insecure(self) -> Curl {
        self.arg("-k")
    }

    /// `-v`: curl's connection details (TLS handshake, the server certificate's subject and
    /// issuer) go to [`CurlResult::stderr`].
    pub fn verbose(self) -> Curl {
        self.arg("-v")
    }

    /// Use an explicit HTTP proxy (`-x`), e.g. `http://127.0.0.1:15080`.
    pub fn proxy(mut self, proxy: &str) -> Curl {
        self.proxy = Some(proxy.to_string());
        self
    }

    /// Adds a request header, `"Name: value"`.
    pub fn header(self, h: &str) -> Curl {
        self.arg("-H").arg(h)
    }

    pub fn max_time(mut self, secs: f64) -> Curl {
        self.max_time = secs;
        self
    }

    /// Any other curl argument.
    pub fn arg(mut self, a: &str) -> Curl {
        self.args.push(a.to_string());
        self
    }

    /// Runs curl and returns what happened; never panics on a curl failure (the exit code tells).
    pub fn run(self) -> CurlResult {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let body_path = self.workdir.join(format!("curl-{n}.body"));
        let headers_path = self.workdir.join(format!("curl-{n}.headers"));
        let mut cmd = Command::new(&tools().ip);
        cmd.args(["netns", "exec", &self.ns]).arg(&tools().curl);
        let mut shown: Vec<String> = vec!["curl".into()];
        let mut push = |cmd: &mut Command, a: &str, show: bool| {
            cmd.arg(a);
            if show {
                shown.push(if a.contains(' ') || a.is_empty() {
                    format!("'{a}'")
                } else {
                    a.to_string()
                });
            }
        };
        push(&mut cmd, "-sS", true);
        push(&mut cmd, "--connect-timeout", false);
        push(&mut cmd, "5", false);
        push(&mut cmd, "--max-time", false);
        push(&mut cmd, &format!("{}", self.max_time), false);
        push(&mut cmd, "-o", false);
        push(&mut cmd, &body_path.to_string_lossy(), false);
        push(&mut cmd, "-D", false);
        push(&mut cmd, &headers_path.to_string_lossy(), false);
        push(&mut cmd, "-w", false);
        push(
            &mut cmd,
            "%{http_code} %{http_connect} %{time_total}",
            false,
        );
        if let Some(ca) = &self.cacert {
            push(&mut cmd, "--cacert", true);
            push(&mut cmd, &ca.to_string_lossy(), true);
        }
        match &self.proxy {
            Some(p) => {
                push(&mut cmd, "-x", true);
                push(&mut cmd, p, true);
            }
            None => {
                push(&mut cmd, "--noproxy", false);
                push(&mut cmd, "*", false);
            }
        }
        for a in &self.args {
            push(&mut cmd, a, true);
        }
        push(&mut cmd, &self.url, true);
        crate::process::scrub_env(&mut cmd);
        let cmdline = format!("ip netns exec {} {}", self.ns, shown.join(" "));
        let started = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        let elapsed = started.elapsed();
        let w = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = w.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let connect_status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let time_total = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(elapsed.as_secs_f64());
        let raw_headers = std::fs::read_to_string(&headers_path).unwrap_or_default();
        let body = std::fs::read(&body_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&body_path);
        let _ = std::fs::remove_file(&headers_path);
        let (status_line, headers) = parse_last_header_block(&raw_headers);
        CurlResult {
            cmdline,
            exit_code: out.status.code().unwrap_or(-1),
            status,
            connect_status,
            time_total,
            elapsed,
            status_line,
            headers,
            raw_headers,
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The final response's status line and headers (after a CONNECT or 1xx block, if any).
fn parse_last_header_block(raw: &str) -> (String, Vec<(String, String)>) {
    let mut status_line = String::new();
    let mut headers = Vec::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            status_line = line.to_string();
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status_line, headers)
}

/// What one curl run did.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// The command, for messages.
    pub cmdline: String,
    /// curl's exit code (0 = success, 6 = cannot resolve, 7 = cannot connect, 28 = timeout,
    /// 35 = TLS handshake failed, 52 = empty reply, 56 = receive failure / CONNECT refused).
    pub exit_code: i32,
    /// `%{http_code}`: the final response status (0 when there was none).
    pub status: u16,
    /// `%{http_connect}`: the status the proxy gave to CONNECT (0 when no CONNECT happened).
    pub connect_status: u16,
    /// `%{time_total}` in seconds.
    pub time_total: f64,
    /// Wall-clock time of the whole `ip netns exec curl` run.
    pub elapsed: Duration,
    pub status_line: String,
    /// Response headers of the final response, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub raw_headers: String,
    pub body: String,
    pub stderr: String,
}

impl CurlResult {
    /// First response header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the whole result when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{self}"))
    }

    /// httpbin's view of the request headers (`{"headers": {...}}` from /headers, /get, …), as a
    /// list of (name, value) with httpbin's capitalisation.
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        let v = self.json();
        let Some(obj) = v.get("headers").and_then(|h| h.as_object()) else {
            panic!("httpbin response has no \"headers\" object:\n{self}");
        };
        obj.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect()
    }

    /// A request header as httpbin saw it (case-insensitive name).
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.echoed_headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Panics unless curl exited 0 with this HTTP status.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Self {
        assert!(
            self.exit_code == 0 && self.status == status,
            "expected curl to exit 0 with HTTP {status}:\n{self}"
        );
        self
    }

    /// Panics unless curl exited with this code.
    #[track_caller]
    pub fn expect_exit(&self, code: i32) -> &Self {
        assert!(
            self.exit_code == code,
            "expected curl to exit with code {code}:\n{self}"
        );
        self
    }
}

impl fmt::Display for CurlResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body: String = self.body.chars().take(2000).collect();
        write!(
            f,
            "  $ {}\n  exit code {}, http_code {}, http_connect {}, time_total {:.3}s (wall {:.3}s)\n  stderr: {}\n  \
             headers:\n{}\n  body ({} bytes):\n{}",
            self.cmdline,
            self.exit_code,
            self.status,
            self.connect_status,
            self.time_total,
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end(),
            self.raw_headers.lines().map(|l| format!("    {}", l.trim_end())).collect::<Vec<_>>().join("\n"),
            self.body.len(),
            body
        )
    }
}
