//! One test's world: a pod namespace and an "external" namespace joined by a veth pair, dnsmasq,
//! httpbin over HTTP and HTTPS, a per-test CA, and (once started) the sidecar. Everything is torn
//! down on drop; when the test is failing, every log is printed first.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::accesslog::AccessLogEntry;
use crate::config::ConfigDir;
use crate::curl::{Curl, CurlResult};
use crate::metrics;
use crate::netns::Netns;
use crate::pki::Pki;
use crate::prereq::tools;
use crate::process::{LogBook, Proc};
use crate::servers;
use crate::sidecar::{Sidecar, SidecarOpts, ADMIN_PORT, PROXY_PORT, STATS_PORT};
use crate::slot::Slot;
use crate::wait::eventually;

/// The addresses of one test's hosts (subnet `10.234.<slot>.0/24`).
#[derive(Debug, Clone, Copy)]
pub struct Hosts {
    /// Third octet of the subnet.
    pub subnet: u8,
    /// The external namespace's own address; dnsmasq listens here.
    pub dns: Ipv4Addr,
    /// The pod (client + sidecar).
    pub pod: Ipv4Addr,
    /// `httpbin.org`: httpbin on :80 (plain HTTP) and :443 (TLS).
    pub httpbin: Ipv4Addr,
    /// `www.google.com`: httpbin over TLS on :443 only.
    pub google: Ipv4Addr,
    /// `edition.cnn.com`: httpbin over TLS on :443 only.
    pub cnn: Ipv4Addr,
}

impl Hosts {
    fn new(subnet: u8) -> Hosts {
        let ip = |h: u8| Ipv4Addr::new(10, 234, subnet, h);
        Hosts {
            subnet,
            dns: ip(1),
            pod: ip(2),
            httpbin: ip(10),
            google: ip(20),
            cnn: ip(21),
        }
    }

    /// The whole test subnet, e.g. `10.234.7.0/24`.
    pub fn cidr(&self) -> String {
        format!("10.234.{}.0/24", self.subnet)
    }

    /// A range that holds the TLS hosts (www.google.com, edition.cnn.com) but not httpbin.org nor
    /// the DNS server: `10.234.<n>.16/28`. Plays the "internal service range" of seed 000.
    pub fn tls_hosts_cidr(&self) -> String {
        format!("10.234.{}.16/28", self.subnet)
    }
}

/// The names served by the test's DNS and their addresses.
pub const HTTPBIN: &str = "httpbin.org";
pub const GOOGLE: &str = "www.google.com";
pub const CNN: &str = "edition.cnn.com";
/// Seed 004's external API; served by the httpbin.org host (the guides' wrong-port story).
pub const WORLDCLOCK: &str = "worldclockapi.com";

/// What every environment starts from: a slot (with what dead tests left behind swept away), a
/// short form of the test name for namespace names, and a world-readable temporary directory
/// recorded in the slot's lock file.
pub(crate) struct Workspace {
    pub slot: Slot,
    pub short: String,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Workspace {
    pub fn new(test: &str) -> Workspace {
        let slot = Slot::acquire(test);
        // Anything dead tests left behind, in this slot and in free ones.
        slot.sweep_stale();
        let short: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-e2e-{short}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create temp dir: {e}"));
        let path = dir.path().to_path_buf();
        slot.record_dir(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Workspace {
            slot,
            short,
            dir,
            path,
        }
    }
}

/// Under `SLUICE_E2E_KEEP`, keeps the test's temporary directory instead of deleting it (and,
/// when the test failed, says where it is).
pub(crate) fn keep_dir_if_asked(dir: &mut Option<tempfile::TempDir>) {
    if std::env::var_os("SLUICE_E2E_KEEP").is_none() {
        return;
    }
    if let Some(d) = dir.take() {
        let kept = d.keep();
        if std::thread::panicking() {
            eprintln!("keeping {}", kept.display());
        }
    }
}

/// Sets `p`'s permission bits, ignoring failure.
pub(crate) fn chmod(p: &Path, mode: u32) {
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// dnsmasq in `ns`, in the foreground, logging every query to stdout, answering only for
/// `records` (and whatever `--addn-hosts` files the caller adds) and NXDOMAIN for every other name.
pub(crate) fn dnsmasq_command(
    ns: &Netns,
    listen: Ipv4Addr,
    dir: &Path,
    records: &[(&str, Ipv4Addr)],
) -> Command {
    let mut cmd = ns.cmd(&tools().dnsmasq);
    cmd.args([
        "--keep-in-foreground",
        "--log-facility=-",
        "--log-queries",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--local=/#/",
    ])
    .arg(format!("--listen-address={listen}"))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    for (name, ip) in records {
        cmd.arg(format!("--host-record={name},{ip}"));
    }
    cmd
}

/// One end-to-end test's environment. Field order is teardown order.
pub struct TestEnv {
    pub name: String,
    sidecar: Option<Sidecar>,
    servers: Vec<Proc>,
    /// The "pod": curl, iptables rules, the sidecar.
    pub pod: Netns,
    /// The external hosts.
    pub ext: Netns,
    pub hosts: Hosts,
    /// The sidecar's `--config` directory.
    pub config: ConfigDir,
    /// The test CA and the server certificate of the HTTPS hosts.
    pub pki: Pki,
    pub logs: LogBook,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    _slot: Slot,
}

impl TestEnv {
    /// Builds the namespaces, DNS, httpbin (HTTP and HTTPS) and the CA; no sidecar yet.
    pub fn new(test: &str) -> TestEnv {
        let started = Instant::now();
        let tools = tools();
        let Workspace {
            slot,
            short,
            dir,
            path: dir_path,
        } = Workspace::new(test);
        let hosts = Hosts::new(slot.index());
        let logs = LogBook::default();

        let pod = Netns::create(&format!("{}pod-{short}", slot.prefix()));
        let ext = Netns::create(&format!("{}ext-{short}", slot.prefix()));
        let (vp, ve) = (
            format!("sl{:03}p", slot.index()),
            format!("sl{:03}e", slot.index()),
        );
        crate::process::run_checked(
            "create veth pair",
            Command::new(&tools.ip).args([
                "link",
                "add",
                &vp,
                "netns",
                pod.name(),
                "type",
                "veth",
                "peer",
                "name",
                &ve,
                "netns",
                ext.name(),
            ]),
        );
        pod.ip(&["addr", "add", &format!("{}/24", hosts.pod), "dev", &vp]);
        pod.ip(&["link", "set", &vp, "up"]);
        ext.ip(&["addr", "add", &format!("{}/24", hosts.dns), "dev", &ve]);
        for h in [hosts.httpbin, hosts.google, hosts.cnn] {
            ext.ip(&["addr", "add", &format!("{h}/32"), "dev", &ve]);
        }
        ext.ip(&["link", "set", &ve, "up"]);
        pod.set_resolv_conf(&format!(
            "nameserver {}\noptions timeout:1 attempts:2\n",
            hosts.dns
        ));

        let pki = Pki::generate(&dir_path, "test", &[GOOGLE, CNN, HTTPBIN]);
        let config = ConfigDir::create(&dir_path.join("config"));

        let mut env = TestEnv {
            name: test.to_string(),
            sidecar: None,
            servers: Vec::new(),
            pod,
            ext,
            hosts,
            config,
            pki,
            logs,
            dir: Some(dir),
            dir_path,
            _slot: slot,
        };
        env.start_dnsmasq();
        env.start_httpbin();
        env.wait_servers_ready();
        eprintln!(
            "[e2e {test}] environment ready in {:.1}s: pod netns {}, ext netns {}, subnet {}, dir {}",
            started.elapsed().as_secs_f64(),
            env.pod.name(),
            env.ext.name(),
            env.hosts.cidr(),
            env.dir_path.display()
        );
        env
    }

    /// The test's temporary directory (logs, config, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    fn start_dnsmasq(&mut self) {
        let h = self.hosts;
        let cmd = dnsmasq_command(
            &self.ext,
            h.dns,
            &self.dir_path,
            &[
                (HTTPBIN, h.httpbin),
                (GOOGLE, h.google),
                (CNN, h.cnn),
                (WORLDCLOCK, h.httpbin),
            ],
        );
        let p = Proc::spawn(
            "dnsmasq",
            cmd,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        );
        self.servers.push(p);
    }

    fn gunicorn(&self, binds: &[String], tls: bool) -> Command {
        let tls = tls.then_some((
            self.pki.server_cert.as_path(),
            self.pki.server_key.as_path(),
        ));
        servers::httpbin_command(&self.ext, &self.dir_path, binds, tls)
    }

    fn start_httpbin(&mut self) {
        let h = self.hosts;
        let http = self.gunicorn(&[format!("{}:80", h.httpbin)], false);
        let https = self.gunicorn(
            &[
                format!("{}:443", h.httpbin),
                format!("{}:443", h.google),
                format!("{}:443", h.cnn),
            ],
            true,
        );
        // SIGINT is gunicorn's quick shutdown.
        self.servers.push(Proc::spawn(
            "httpbin-http",
            http,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGINT,
        ));
        self.servers.push(Proc::spawn(
            "httpbin-https",
            https,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGINT,
        ));
    }

    fn wait_servers_ready(&mut self) {
        let h = self.hosts;
        let curl = tools().curl.clone();
        let checks: Vec<(String, Vec<String>)> = vec![
            (
                format!("httpbin on {}:80", h.httpbin),
                vec![format!("http://{}/status/204", h.httpbin)],
            ),
            (
                format!("httpbin over TLS on {}:443", h.google),
                vec!["-k".into(), format!("https://{}/status/204", h.google)],
            ),
        ];
        for (what, args) in checks {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = self
                    .ext
                    .cmd(&curl)
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "2",
                        "--noproxy",
                        "*",
                    ])
                    .args(&args)
                    .output();
                if matches!(&out, Ok(o) if o.stdout == b"204") {
                    break;
                }
                if let Some(dead) = self
                    .servers
                    .iter_mut()
                    .find_map(|p| p.exited().map(|s| (p.label().to_string(), s)))
                {
                    panic!(
                        "{} exited ({}) while starting\n{}",
                        dead.0,
                        dead.1,
                        self.logs.dump(60)
                    );
                }
                if Instant::now() > deadline {
                    panic!("{what} did not answer within 30 s\n{}", self.logs.dump(60));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // DNS: answer for the test names.
        let (ok, out) = self.pod.try_run("getent", &["hosts", HTTPBIN]);
        assert!(
            ok && out.contains(&h.httpbin.to_string()),
            "dnsmasq does not answer {HTTPBIN} → {} inside {}: {out}\n{}",
            h.httpbin,
            self.pod.name(),
            self.logs.dump(40)
        );
    }

    /// What one of the external servers (`dnsmasq`, `httpbin-http`, `httpbin-https`) wrote to its
    /// stdout and stderr so far (gunicorn logs each request on stdout).
    pub fn server_log(&self, label: &str) -> String {
        crate::servers::server_log(&self.servers, label)
    }

    /// Stops one of the external servers (`dnsmasq`, `httpbin-http`, `httpbin-https`) for
    /// good, e.g. to take the test's DNS away; panics if there is none by that name.
    pub fn stop_server(&mut self, label: &str) {
        let p = self
            .servers
            .iter_mut()
            .find(|p| p.label() == label)
            .unwrap_or_else(|| panic!("no server {label} in this environment"));
        p.stop();
    }

    /// Starts `sluice control --config <the test's config dir>` in the pod as `label`, serving
    /// xDS on 127.0.0.1:`xds_port` and its monitoring port on `xds_port + 4` (15010 → 15014, as
    /// istiod), and waits until it is ready. A sidecar started with
    /// `SidecarOpts::xds("127.0.0.1:15010")` then takes its config from it.
    pub fn start_control(&mut self, label: &str, xds_port: u16) {
        self.start_control_with(label, xds_port, &[]);
    }

    /// [`TestEnv::start_control`] with more arguments (e.g. `--mesh-ca DIR` for the mutual-TLS
    /// port, 15012 unless `--xds-tls-port` says otherwise).
    pub fn start_control_with(&mut self, label: &str, xds_port: u16, extra: &[&str]) {
        let config = self.config.path().to_string_lossy().to_string();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        self.start_control_from(label, xds_port, &args, &[]);
    }

    /// `sluice control` in the pod with `args` saying what it serves (`--config DIR`,
    /// `--kube`, …) and `envs` (`KUBECONFIG`), on `xds_port` and `xds_port + 4` (monitoring);
    /// waits until it is ready.
    pub fn start_control_from(
        &mut self,
        label: &str,
        xds_port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) {
        let mut cmd = self.pod.cmd(crate::prereq::sluice_bin());
        cmd.args([
            "control",
            "--bind",
            "127.0.0.1",
            "--xds-port",
            &xds_port.to_string(),
            "--monitoring-port",
            &(xds_port + 4).to_string(),
            "--name",
            label,
        ]);
        cmd.args(args);
        cmd.envs(envs.iter().copied());
        if let Some(level) = std::env::var_os("SLUICE_E2E_LOG") {
            cmd.env("SLUICE_LOG", level);
        }
        self.start_process(label, cmd);
        crate::eventually(
            &format!("{label} ready"),
            std::time::Duration::from_secs(20),
            || {
                let r = self.local_get(xds_port + 4, "/ready");
                (r.status == 200).then_some(()).ok_or(format!(
                    "{r}\n{}",
                    crate::servers::server_log(&self.servers, label)
                ))
            },
        );
    }

    /// Runs `cmd` (built with `self.pod.cmd(…)` to run in the pod) as server `label`: its log
    /// is kept with the test's, and it is stopped with the test (SIGTERM).
    pub fn start_process(&mut self, label: &str, cmd: std::process::Command) {
        self.servers.retain(|p| p.label() != label);
        self.servers.push(Proc::spawn(
            label,
            cmd,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
    }

    /// A curl run from the pod, trusting the test CA.
    pub fn curl(&self, url: &str) -> Curl {
        Curl::new(&self.pod, &self.dir_path, url).cacert(&self.pki.ca_cert)
    }

    /// A curl run from the pod through the sidecar's explicit proxy port.
    pub fn curl_via_proxy(&self, url: &str) -> Curl {
        self.curl(url)
            .proxy(&format!("http://127.0.0.1:{PROXY_PORT}"))
    }

    /// `GET` on one of the sidecar's local ports (admin, status, stats) from inside the pod.
    pub fn local_get(&self, port: u16, path: &str) -> CurlResult {
        self.curl(&format!("http://127.0.0.1:{port}{path}"))
            .max_time(5.0)
            .run()
    }

    /// The sidecar's Prometheus metrics (`:15090/stats/prometheus`), parsed.
    pub fn metrics(&self) -> Vec<metrics::Sample> {
        let r = self.local_get(STATS_PORT, "/stats/prometheus");
        r.expect_status(200);
        metrics::parse(&r.body)
    }

    /// The admin API (`127.0.0.1:15000`).
    pub fn admin_get(&self, path: &str) -> CurlResult {
        self.local_get(ADMIN_PORT, path)
    }

    /// Runs `sluice init` (when `opts.capture` is set) and starts `sluice sidecar` as uid 1337 in the
    /// pod, then waits for `/healthz/ready`. Panics with the sidecar's logs if it does not get ready.
    pub fn start_sidecar(&mut self, opts: SidecarOpts) -> &mut Sidecar {
        assert!(
            self.sidecar.is_none(),
            "a sidecar is already running in this environment"
        );
        let sc = crate::sidecar::launch(
            &self.pod,
            &self.dir_path,
            &self.logs,
            "sidecar",
            self.config.path(),
            opts,
        );
        self.sidecar.insert(sc)
    }

    /// The running sidecar; panics if none was started.
    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar
            .as_ref()
            .expect("no sidecar started: call start_sidecar first")
    }

    /// The TEXT access log lines so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.sidecar().access_log()
    }

    /// Waits (up to 5 s; access logs may be flushed in batches) for an access log line that `pred`
    /// accepts, and returns it; panics with every line seen otherwise.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        let sc = self.sidecar();
        eventually(
            &format!("access log line {what}"),
            Duration::from_secs(5),
            || {
                let lines = sc.access_log();
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

    /// Waits for a JSON access log line that `pred` accepts.
    #[track_caller]
    pub fn wait_for_json_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool,
    ) -> serde_json::Map<String, serde_json::Value> {
        let sc = self.sidecar();
        eventually(
            &format!("JSON access log line {what}"),
            Duration::from_secs(5),
            || {
                let lines = sc.json_access_log();
                lines.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                    format!(
                        "{} JSON access log lines so far; sidecar stdout:\n{}",
                        lines.len(),
                        sc.stdout_lines().join("\n")
                    )
                })
            },
        )
    }

    /// The pod's nat table.
    pub fn iptables_nat(&self) -> String {
        crate::sidecar::iptables_nat(&self.pod)
    }

    /// Stops the sidecar (SIGTERM, then SIGKILL after 3 s).
    pub fn stop_sidecar(&mut self) {
        if let Some(mut sc) = self.sidecar.take() {
            sc.proc.stop();
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut extra = String::new();
            if let Some(sc) = self.sidecar.as_mut() {
                if let Some(status) = sc.exited() {
                    extra.push_str(&format!("!!! the sidecar had exited: {status}\n"));
                }
            }
            eprintln!(
                "\n════════ e2e test {} failed: logs (pod netns {}, ext netns {}, subnet {}) ════════\n{extra}{}\
                 ════════ end of logs for {} ════════",
                self.name,
                self.pod.name(),
                self.ext.name(),
                self.hosts.cidr(),
                self.logs.dump(200),
                self.name
            );
        }
        keep_dir_if_asked(&mut self.dir);
        // Fields drop next, in order: sidecar, servers, namespaces, temp dir, slot.
    }
}
