//! The sidecar under test, driven through the documented command line (DESIGN.md, "Command-line
//! contract"):
//!
//! ```text
//! sluice init -p 15001 -u 1337 -m REDIRECT -i '*' -x '' -b ''            # in the pod netns, as root
//!     [-z 15006 -b '*' -d 15090,15021,15000]                              # with inbound capture
//! sluice sidecar --config DIR --namespace default --labels app=sleep \
//!     --admin-port 15000 --status-port 15021 --stats-port 15090 [--proxy-port 15080] \
//!     [--inbound-port 15006]                                              # in the pod netns, as uid 1337
//! ```
//! Ready when `GET http://127.0.0.1:15021/healthz/ready` answers 200. [`launch`] does all of it
//! for any namespace; [`crate::TestEnv`] and [`crate::mesh::MeshEnv`] both use it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::accesslog::{parse_json_lines, AccessLogEntry};
use crate::curl::{Curl, CurlResult};
use crate::metrics;
use crate::netns::Netns;
use crate::prereq::{sluice_bin, tools};
use crate::process::{LogBook, Proc};
use crate::wait::eventually;

pub const PROXY_UID: u32 = 1337;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;
pub const STATUS_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15090;
pub const PROXY_PORT: u16 = 15080;
pub const INBOUND_PORT: u16 = 15006;

/// How long a sidecar may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// iptables capture set up by `sluice init` before the sidecar starts.
#[derive(Debug, Clone)]
pub struct Capture {
    /// `-i`: outbound CIDRs to redirect (`*` = all).
    pub include: String,
    /// `-x`: outbound CIDRs to leave alone.
    pub exclude: String,
    /// `-b`: inbound ports to redirect to the inbound port (`*` = all, empty = no inbound capture).
    pub inbound_ports: String,
    /// `-d`: inbound ports never redirected (with `-b '*'`).
    pub inbound_exclude: String,
}

impl Capture {
    fn outbound_all() -> Capture {
        Capture {
            include: "*".into(),
            exclude: String::new(),
            inbound_ports: String::new(),
            inbound_exclude: String::new(),
        }
    }
}

/// How to start the sidecar.
#[derive(Debug, Clone)]
pub struct SidecarOpts {
    /// `None`: no iptables rules at all (explicit-proxy use).
    pub capture: Option<Capture>,
    /// `--proxy-port` (explicit HTTP/CONNECT proxy), when set.
    pub proxy_port: Option<u16>,
    /// More arguments for `sluice sidecar`.
    pub extra_args: Vec<String>,
    /// `--namespace` (default `default`).
    pub namespace: String,
    /// `--labels` (default `app=sleep`).
    pub labels: String,
    /// `--inbound-port`, when set.
    pub inbound_port: Option<u16>,
    /// Wait for `/healthz/ready` after starting (default true).
    pub wait_ready: bool,
    /// `--xds HOST:PORT[,…]` instead of `--config DIR`: config from a control plane.
    pub xds: Option<String>,
}

impl SidecarOpts {
    /// Capture all outbound TCP (`-i '*' -x ''`), as Istio's injector does by default.
    pub fn captured() -> SidecarOpts {
        SidecarOpts {
            capture: Some(Capture::outbound_all()),
            proxy_port: None,
            extra_args: Vec::new(),
            namespace: "default".into(),
            labels: "app=sleep".into(),
            inbound_port: None,
            wait_ready: true,
            xds: None,
        }
    }

    /// No iptables; the app uses `curl -x http://127.0.0.1:15080`.
    pub fn explicit_proxy() -> SidecarOpts {
        SidecarOpts {
            capture: None,
            proxy_port: Some(PROXY_PORT),
            extra_args: Vec::new(),
            namespace: "default".into(),
            labels: "app=sleep".into(),
            inbound_port: None,
            wait_ready: true,
            xds: None,
        }
    }

    /// Take the config from the control plane(s) at `servers` (`--xds`) instead of the folder.
    pub fn xds(mut self, servers: &str) -> SidecarOpts {
        self.xds = Some(servers.into());
        self
    }

    /// `-i CIDRS` (comma-separated): capture only these outbound ranges.
    pub fn include(mut self, cidrs: &str) -> SidecarOpts {
        self.capture
            .get_or_insert_with(Capture::outbound_all)
            .include = cidrs.into();
        self
    }

    /// `-x CIDRS` (comma-separated): never capture these outbound ranges.
    pub fn exclude(mut self, cidrs: &str) -> SidecarOpts {
        self.capture
            .get_or_insert_with(Capture::outbound_all)
            .exclude = cidrs.into();
        self
    }

    /// Captures inbound traffic too: `sluice init -z 15006 -b PORTS -d EXCLUDE` and
    /// `sluice sidecar --inbound-port 15006`, e.g. `.inbound("*", "15090,15021,15000")`.
    pub fn inbound(mut self, ports: &str, exclude: &str) -> SidecarOpts {
        let c = self.capture.get_or_insert_with(Capture::outbound_all);
        c.inbound_ports = ports.into();
        c.inbound_exclude = exclude.into();
        self.inbound_port = Some(INBOUND_PORT);
        self
    }

    /// `--namespace NS`.
    pub fn namespace(mut self, ns: &str) -> SidecarOpts {
        self.namespace = ns.into();
        self
    }

    /// `--labels k=v,k=v`.
    pub fn labels(mut self, labels: &str) -> SidecarOpts {
        self.labels = labels.into();
        self
    }

    /// Do not wait for readiness after starting (to look at why the sidecar is not ready).
    pub fn without_waiting(mut self) -> SidecarOpts {
        self.wait_ready = false;
        self
    }

    pub fn arg(mut self, a: &str) -> SidecarOpts {
        self.extra_args.push(a.into());
        self
    }

    /// The `sluice init` arguments for this capture.
    pub fn init_args(capture: &Capture) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "init".into(),
            "-p".into(),
            OUTBOUND_PORT.to_string(),
            "-u".into(),
            PROXY_UID.to_string(),
            "-m".into(),
            "REDIRECT".into(),
            "-i".into(),
            capture.include.clone(),
            "-x".into(),
            capture.exclude.clone(),
        ];
        if capture.inbound_ports.is_empty() {
            args.extend(["-b".into(), String::new()]);
        } else {
            args.extend([
                "-z".into(),
                INBOUND_PORT.to_string(),
                "-b".into(),
                capture.inbound_ports.clone(),
                "-d".into(),
                capture.inbound_exclude.clone(),
            ]);
        }
        args
    }

    /// The `sluice sidecar` arguments.
    pub fn sidecar_args(&self, config_dir: &str) -> Vec<String> {
        let source = match &self.xds {
            Some(servers) => ["--xds".to_string(), servers.clone()],
            None => ["--config".to_string(), config_dir.to_string()],
        };
        let mut a: Vec<String> = vec!["sidecar".into()];
        a.extend(source);
        a.extend([
            "--namespace".into(),
            self.namespace.clone(),
            "--labels".into(),
            self.labels.clone(),
            "--admin-port".into(),
            ADMIN_PORT.to_string(),
            "--status-port".into(),
            STATUS_PORT.to_string(),
            "--stats-port".into(),
            STATS_PORT.to_string(),
        ]);
        if let Some(p) = self.proxy_port {
            a.push("--proxy-port".into());
            a.push(p.to_string());
        }
        if let Some(p) = self.inbound_port {
            a.push("--inbound-port".into());
            a.push(p.to_string());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running sidecar. Its stdout (where the access log goes with `accessLogFile: /dev/stdout`)
/// and stderr are files in the test's directory.
pub struct Sidecar {
    pub(crate) proc: Proc,
    pub opts: SidecarOpts,
    /// The namespace it runs in, and the test directory (for curl's scratch files).
    netns: String,
    dir: PathBuf,
}

/// Runs `sluice init` (when `opts.capture` is set) as root in `ns`, then `sluice sidecar` as
/// uid 1337 with `--config config_dir`, and waits for `/healthz/ready`. `label` names the log
/// files (`<label>.stdout.log`, `<label>-init.log`, …) and their entries in `logs`. Panics with
/// every log of `logs` when init fails or the sidecar does not get ready.
pub fn launch(
    ns: &Netns,
    dir: &Path,
    logs: &LogBook,
    label: &str,
    config_dir: &Path,
    opts: SidecarOpts,
) -> Sidecar {
    let bin = sluice_bin();
    if let Some(capture) = &opts.capture {
        let args = SidecarOpts::init_args(capture);
        let out = ns
            .cmd(&bin)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} init: {e}", bin.display()));
        let log = dir.join(format!("{label}-init.log"));
        let text = format!(
            "$ sluice {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(&log, &text);
        logs.add(&format!("sluice init ({label})"), &log);
        assert!(
            out.status.success(),
            "`sluice init` failed in {}:\n{text}",
            ns.name()
        );
        let rules = iptables_nat(ns);
        let rules_log = dir.join(format!("{label}-iptables-nat.txt"));
        let _ = std::fs::write(&rules_log, &rules);
        logs.add(
            &format!("iptables-save -t nat in {} (after sluice init)", ns.name()),
            &rules_log,
        );
        let mut want = vec![OUTBOUND_PORT];
        if !capture.inbound_ports.is_empty() {
            want.push(INBOUND_PORT);
        }
        for port in want {
            assert!(
                rules.contains(&format!("--to-ports {port}")),
                "`sluice init` exited 0 but left no REDIRECT to {port} in the nat table of {}:\n{rules}\n{text}",
                ns.name()
            );
        }
    }
    let t = tools();
    let mut cmd = ns.cmd(&t.setpriv);
    cmd.args([
        "--reuid",
        &PROXY_UID.to_string(),
        "--regid",
        &PROXY_UID.to_string(),
        "--clear-groups",
        "--pdeathsig",
        "KILL",
        "--",
    ])
    .arg(&bin)
    .args(opts.sidecar_args(&config_dir.to_string_lossy()));
    if let Some(level) = std::env::var_os("SLUICE_E2E_LOG") {
        cmd.env("SLUICE_LOG", &level).env("RUST_LOG", level);
    }
    cmd.env("HOME", dir);
    let proc = Proc::spawn(label, cmd, dir, logs, Some(PROXY_UID), libc::SIGTERM);
    let mut sidecar = Sidecar {
        proc,
        opts,
        netns: ns.name().to_string(),
        dir: dir.to_path_buf(),
    };
    if sidecar.opts.wait_ready {
        sidecar.wait_ready(logs);
    }
    sidecar
}

/// The nat table of a namespace (`iptables-save -t nat`).
pub fn iptables_nat(ns: &Netns) -> String {
    ns.try_run(&tools().iptables_save.to_string_lossy(), &["-t", "nat"])
        .1
}

impl Sidecar {
    fn wait_ready(&mut self, logs: &LogBook) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let last = loop {
            let r = self.local_get(STATUS_PORT, "/healthz/ready");
            if r.exit_code == 0 && r.status == 200 {
                return;
            }
            let last = format!("{r}");
            if let Some(status) = self.exited() {
                panic!(
                    "the sidecar {} in {} exited ({status}) before it got ready; last readiness probe:\n{last}\n{}",
                    self.proc.label(),
                    self.netns,
                    logs.dump(80)
                );
            }
            if Instant::now() > deadline {
                break last;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        panic!(
            "the sidecar {} in {} did not answer 200 on http://127.0.0.1:{STATUS_PORT}/healthz/ready within \
             {READY_TIMEOUT:?}; last probe:\n{last}\n{}",
            self.proc.label(),
            self.netns,
            logs.dump(80)
        );
    }

    /// `GET` on one of the sidecar's local ports (admin, status, stats) from inside its namespace.
    pub fn local_get(&self, port: u16, path: &str) -> CurlResult {
        Curl::in_netns(
            &self.netns,
            &self.dir,
            &format!("http://127.0.0.1:{port}{path}"),
        )
        .max_time(5.0)
        .run()
    }

    /// The admin API (`127.0.0.1:15000`).
    pub fn admin_get(&self, path: &str) -> CurlResult {
        self.local_get(ADMIN_PORT, path)
    }

    /// The Prometheus metrics (`:15090/stats/prometheus`), parsed; panics unless they answer 200.
    pub fn metrics(&self) -> Vec<metrics::Sample> {
        let r = self.local_get(STATS_PORT, "/stats/prometheus");
        r.expect_status(200);
        metrics::parse(&r.body)
    }

    /// Waits (up to 5 s; access logs may be flushed in batches) for an access log line that `pred`
    /// accepts, and returns it; panics with every line seen otherwise.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        eventually(
            &format!("access log line {what} (sidecar {})", self.proc.label()),
            Duration::from_secs(5),
            || {
                let lines = self.access_log();
                lines.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                    format!(
                        "{} access log lines so far:\n{}",
                        lines.len(),
                        lines
                            .iter()
                            .map(|e| format!("  {}", e.raw))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
            },
        )
    }

    /// Stops the sidecar (SIGTERM, then SIGKILL after 3 s).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every line the sidecar wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// What the sidecar wrote to stderr so far (its own log: config errors, listeners).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.proc.stderr_path()).unwrap_or_default()
    }

    /// The TEXT access log lines written so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| AccessLogEntry::parse(l))
            .collect()
    }

    /// The JSON access log lines written so far.
    pub fn json_access_log(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        parse_json_lines(&self.stdout_lines())
    }

    /// `Some(status)` if the sidecar has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_args_without_and_with_inbound_capture() {
        let plain = SidecarOpts::captured();
        let capture = plain.capture.as_ref().expect("captured");
        assert_eq!(
            SidecarOpts::init_args(capture).join(" "),
            "init -p 15001 -u 1337 -m REDIRECT -i * -x  -b "
        );
        let mesh = SidecarOpts::captured()
            .inbound("*", "15090,15021,15000")
            .namespace("tutorial")
            .labels("app=customer,version=v1");
        let capture = mesh.capture.as_ref().expect("captured");
        assert_eq!(
            SidecarOpts::init_args(capture).join(" "),
            "init -p 15001 -u 1337 -m REDIRECT -i * -x  -z 15006 -b * -d 15090,15021,15000"
        );
        let args = mesh.sidecar_args("/cfg").join(" ");
        assert_eq!(
            args,
            "sidecar --config /cfg --namespace tutorial --labels app=customer,version=v1 \
             --admin-port 15000 --status-port 15021 --stats-port 15090 --inbound-port 15006"
        );
        assert!(!plain
            .sidecar_args("/cfg")
            .contains(&"--inbound-port".to_string()));
    }
}
