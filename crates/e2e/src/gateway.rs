//! The ingress-gateway world (seed 003, "Control Ingress Traffic"): a client, `sluice gateway`
//! and the backends, each in its own network namespace on one bridge.
//!
//! ```text
//!   netns slNNN-hub-<test>                    netns slNNN-client-<test>   10.234.N.2   curl, openssl s_client
//!   ┌──────────────────────────────┐  veth    netns slNNN-gateway-<test>  10.234.N.3   sluice gateway (root)
//!   │ br0 10.234.N.1/24            ├───────── netns slNNN-backend-<test>  10.234.N.10  httpbin :8000 (HTTP)
//!   │ dnsmasq :53                  │                                      10.234.N.11  httpbin :8443 (TLS)
//!   └──────────────────────────────┘
//!   DNS: httpbin.example.com, bookinfo.example.com, a.example.com, b.example.com,
//!        secure.example.com → 10.234.N.3 (the gateway); httpbin.default.svc.cluster.local → .100,
//!        tls-backend.default.svc.cluster.local → .101 (cluster IPs no interface owns)
//! ```
//!
//! The gateway runs `sluice gateway --config DIR --namespace istio-system --labels
//! istio=ingressgateway --admin-port 15000 --status-port 15021 --stats-port 15090` as root in its
//! namespace (no iptables: clients address it directly) and is ready when
//! `127.0.0.1:15021/healthz/ready` answers 200. Its config directory starts with the mesh
//! ConfigMap (access log on stdout) and the two backends as Kubernetes Services in `default`
//! with one WorkloadEntry each: `httpbin` (port 8000 `http`, the seed's sample) and `tls-backend`
//! (port 8443 `https`, httpbin behind gunicorn's TLS, for PASSTHROUGH).
//!
//! Certificates ([`GatewayCerts`]): a CA, the gateway's server certificate (SANs: the test names,
//! `httpbin`, its FQDN and the gateway's IP), one certificate each for `a.example.com` and
//! `b.example.com`, a client certificate from the CA and one from another CA (MUTUAL), and the
//! TLS backend's certificate from a third CA (so PASSTHROUGH is visible in the issuer).
//!
//! No namespace has a default route; only the test's own subnet and loopback are ever addressed.
//! Teardown happens on drop, also when the test panics, after every log has been printed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::accesslog::AccessLogEntry;
use crate::config::{mesh_configmap, ConfigDir};
use crate::curl::{Curl, CurlResult};
use crate::env::{chmod, dnsmasq_command, Workspace};
use crate::gateway_config::service_with_endpoint_yaml;
use crate::metrics;
use crate::netns::Netns;
use crate::pki::{Ca, Leaf, Usage};
use crate::prereq::{sluice_bin, tools};
use crate::process::{LogBook, Proc};
use crate::servers;
use crate::sidecar::{ADMIN_PORT, READY_TIMEOUT, STATS_PORT, STATUS_PORT};
use crate::slot::Slot;
use crate::wait::eventually;

/// `--namespace` of the gateway (where `credentialName` Secrets are looked up).
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// `--labels` of the gateway (what Gateway selectors and Ingresses bind to).
pub const GATEWAY_LABELS: &str = "istio=ingressgateway";
/// The mesh ConfigMap's file in the config directory.
pub const MESH_FILE: &str = "istio-configmap.yaml";
/// httpbin's port (and its Service's, named `http`), as in Istio's httpbin sample.
pub const HTTPBIN_PORT: u16 = 8000;
/// The TLS backend's port (its Service's is named `https`).
pub const TLS_BACKEND_PORT: u16 = 8443;
/// The httpbin Service's full name.
pub const HTTPBIN_FQDN: &str = "httpbin.default.svc.cluster.local";
/// The TLS backend Service's full name.
pub const TLS_BACKEND_FQDN: &str = "tls-backend.default.svc.cluster.local";

pub const HTTPBIN_HOST: &str = "httpbin.example.com";
pub const BOOKINFO_HOST: &str = "bookinfo.example.com";
pub const A_HOST: &str = "a.example.com";
pub const B_HOST: &str = "b.example.com";
pub const SECURE_HOST: &str = "secure.example.com";
/// Every name the test DNS maps to the gateway.
pub const GATEWAY_NAMES: [&str; 5] = [HTTPBIN_HOST, BOOKINFO_HOST, A_HOST, B_HOST, SECURE_HOST];

/// The addresses of one gateway environment (subnet `10.234.<slot>.0/24`).
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    pub subnet: u8,
    /// The hub bridge; dnsmasq listens here.
    pub dns: Ipv4Addr,
    /// curl's namespace.
    pub client: Ipv4Addr,
    /// The gateway's namespace (every test name resolves here).
    pub gateway: Ipv4Addr,
    /// httpbin over plain HTTP on :8000.
    pub httpbin: Ipv4Addr,
    /// httpbin over TLS on :8443 (PASSTHROUGH's backend).
    pub tls_backend: Ipv4Addr,
    /// Cluster IP of the httpbin Service (owned by no interface).
    pub httpbin_vip: Ipv4Addr,
    /// Cluster IP of the tls-backend Service (owned by no interface).
    pub tls_backend_vip: Ipv4Addr,
}

impl GatewayAddrs {
    fn new(subnet: u8) -> GatewayAddrs {
        let ip = |h: u8| Ipv4Addr::new(10, 234, subnet, h);
        GatewayAddrs {
            subnet,
            dns: ip(1),
            client: ip(2),
            gateway: ip(3),
            httpbin: ip(10),
            tls_backend: ip(11),
            httpbin_vip: ip(100),
            tls_backend_vip: ip(101),
        }
    }

    pub fn cidr(&self) -> String {
        format!("10.234.{}.0/24", self.subnet)
    }
}

/// The test's certificates (PEM files in the test directory, world-readable).
#[derive(Debug, Clone)]
pub struct GatewayCerts {
    /// The CA of every gateway certificate and of the accepted client certificate.
    pub ca: Ca,
    /// The gateway's certificate: CN httpbin.example.com; SANs httpbin.example.com,
    /// bookinfo.example.com, httpbin, httpbin.default.svc.cluster.local and the gateway's IP.
    pub server: Leaf,
    /// CN and SAN a.example.com.
    pub a: Leaf,
    /// CN and SAN b.example.com.
    pub b: Leaf,
    /// A client certificate (CN client.example.com) from [`GatewayCerts::ca`].
    pub client: Leaf,
    /// Another CA, and a client certificate from it (rejected by MUTUAL servers).
    pub other_ca: Ca,
    pub other_client: Leaf,
    /// The TLS backend's CA and certificate (CN and SAN secure.example.com).
    pub backend_ca: Ca,
    pub backend: Leaf,
    /// Where they are (also where [`GatewayCerts::issue_server`] writes).
    pub dir: PathBuf,
}

impl GatewayCerts {
    fn generate(dir: &Path, gateway_ip: Ipv4Addr) -> GatewayCerts {
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        chmod(&dir, 0o755);
        let dns =
            |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("DNS:{n}")).collect() };
        let ca = Ca::new(&dir, "gateway");
        let mut sans = dns(&[HTTPBIN_HOST, BOOKINFO_HOST, "httpbin", HTTPBIN_FQDN]);
        sans.push(format!("IP:{gateway_ip}"));
        let server = ca.issue(&dir, "server", HTTPBIN_HOST, &sans, Usage::Server, 10);
        let a = ca.issue(&dir, "a", A_HOST, &dns(&[A_HOST]), Usage::Server, 11);
        let b = ca.issue(&dir, "b", B_HOST, &dns(&[B_HOST]), Usage::Server, 12);
        let client = ca.issue(&dir, "client", "client.example.com", &[], Usage::Client, 13);
        let other_ca = Ca::new(&dir, "other");
        let other_client = other_ca.issue(
            &dir,
            "other-client",
            "intruder.example.com",
            &[],
            Usage::Client,
            14,
        );
        let backend_ca = Ca::new(&dir, "backend");
        let backend = backend_ca.issue(
            &dir,
            "backend",
            SECURE_HOST,
            &dns(&[SECURE_HOST, TLS_BACKEND_FQDN]),
            Usage::Server,
            15,
        );
        GatewayCerts {
            ca,
            server,
            a,
            b,
            client,
            other_ca,
            other_client,
            backend_ca,
            backend,
            dir,
        }
    }

    /// A new server certificate from the gateway CA for `hosts` (DNS SANs; CN = `cn`), with
    /// `serial`, written as `<dir>/<file>.pem` / `.key`.
    pub fn issue_server(&self, file: &str, cn: &str, hosts: &[&str], serial: u64) -> Leaf {
        let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        self.ca
            .issue(&self.dir, file, cn, &sans, Usage::Server, serial)
    }
}

/// The certificate a TLS server presented, as `openssl x509 -noout -subject -issuer -serial`
/// prints it.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// e.g. `O = sluice e2e, CN = a.example.com`.
    pub subject: String,
    pub issuer: String,
    pub serial: u64,
    /// The whole `openssl s_client` output, for messages.
    pub handshake: String,
}

impl PeerCert {
    /// The subject's CN.
    pub fn cn(&self) -> &str {
        cn_of(&self.subject)
    }

    /// The issuer's CN.
    pub fn issuer_cn(&self) -> &str {
        cn_of(&self.issuer)
    }
}

fn cn_of(dn: &str) -> &str {
    dn.split(',')
        .map(str::trim)
        .find_map(|part| {
            part.strip_prefix("CN = ")
                .or_else(|| part.strip_prefix("CN="))
        })
        .unwrap_or("")
}

/// The running `sluice gateway`. Its stdout (where the access log goes) and stderr are files in the
/// test directory.
pub struct Gateway {
    proc: Proc,
    netns: String,
    dir: PathBuf,
    /// The arguments after `sluice`.
    pub args: Vec<String>,
}

impl Gateway {
    /// Starts `sluice <args>` (a `sluice gateway` command line) as root in `ns`, logging to `dir`
    /// as `gateway` (`gateway-N` for the Nth start, counted in `starts`), and waits for
    /// `/healthz/ready` (20 s). Panics with every log if it exits or does not get ready.
    pub(crate) fn launch(
        ns: &Netns,
        dir: &Path,
        logs: &LogBook,
        starts: &mut usize,
        args: Vec<String>,
    ) -> Gateway {
        let mut gateway = Gateway::spawn(ns, dir, logs, starts, args);
        gateway.wait_ready(logs);
        gateway
    }

    /// Starts `sluice <args>` in `ns` without waiting for it to get ready.
    pub(crate) fn spawn(
        ns: &Netns,
        dir: &Path,
        logs: &LogBook,
        starts: &mut usize,
        args: Vec<String>,
    ) -> Gateway {
        let mut cmd = ns.cmd(sluice_bin());
        cmd.args(&args);
        if let Some(level) = std::env::var_os("SLUICE_E2E_LOG") {
            cmd.env("SLUICE_LOG", &level).env("RUST_LOG", level);
        }
        cmd.env("HOME", dir);
        *starts += 1;
        let label = if *starts == 1 {
            "gateway".to_string()
        } else {
            format!("gateway-{starts}")
        };
        let proc = Proc::spawn(&label, cmd, dir, logs, None, libc::SIGTERM);
        Gateway {
            proc,
            netns: ns.name().to_string(),
            dir: dir.to_path_buf(),
            args,
        }
    }

    /// Waits for `/healthz/ready` (20 s); panics with every log if the gateway exits or does not
    /// get ready.
    pub fn wait_ready(&mut self, logs: &LogBook) {
        let gateway = self;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let r = gateway.local_get(STATUS_PORT, "/healthz/ready");
            if r.exit_code == 0 && r.status == 200 {
                break;
            }
            if let Some(status) = gateway.exited() {
                panic!(
                    "`sluice {}` in {} exited ({status}) before it got ready; last readiness probe:\n{r}\n{}",
                    gateway.args.join(" "),
                    gateway.netns,
                    logs.dump(80)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "`sluice {}` in {} did not answer 200 on http://127.0.0.1:{STATUS_PORT}/healthz/ready \
                     within {READY_TIMEOUT:?}; last probe:\n{r}\n{}",
                    gateway.args.join(" "),
                    gateway.netns,
                    logs.dump(80)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET` on one of the gateway's local ports (admin, status, stats) from inside its namespace.
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

    /// Every line the gateway wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// What it wrote to stderr so far (its own log).
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

    /// Waits (up to 5 s) for an access log line that `pred` accepts; panics with every line seen.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        eventually(
            &format!("gateway access log line {what}"),
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

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `Some(status)` once the gateway has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Sends SIGTERM only (the gateway drains and exits on its own).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.proc.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.proc.pid());
    }

    /// Waits up to `limit` for the gateway to exit; its exit status, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One gateway test's world. Field order is teardown order: gateway, servers, namespaces,
/// temporary directory, slot.
pub struct GatewayEnv {
    pub name: String,
    gateway: Option<Gateway>,
    servers: Vec<Proc>,
    pub client: Netns,
    pub gw: Netns,
    pub backend: Netns,
    /// More namespaces on the hub (`add_host`), torn down before it.
    extra_hosts: Vec<Netns>,
    pub hub: Netns,
    pub addrs: GatewayAddrs,
    /// The gateway's watched `--config` directory.
    pub config: ConfigDir,
    pub certs: GatewayCerts,
    pub logs: LogBook,
    /// How many gateways were started so far (names their log files).
    starts: usize,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    slot: Slot,
}

impl GatewayEnv {
    /// Builds the hub, the client, gateway and backend namespaces, DNS, both backends and the
    /// certificates; writes the mesh ConfigMap and the backends' Services and WorkloadEntries.
    /// No gateway yet: write its config, then [`GatewayEnv::start_gateway`].
    pub fn new(test: &str) -> GatewayEnv {
        let started = Instant::now();
        tools();
        let Workspace {
            slot,
            short,
            dir,
            path: dir_path,
        } = Workspace::new(test);
        let addrs = GatewayAddrs::new(slot.index());
        let hub = Netns::create(&format!("{}hub-{short}", slot.prefix()));
        hub.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
        hub.ip(&["addr", "add", &format!("{}/24", addrs.dns), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let resolv = format!("nameserver {}\noptions timeout:1 attempts:2\n", addrs.dns);
        hub.set_resolv_conf(&resolv);

        let wire = |role: &str, ip: Ipv4Addr, extra: &[Ipv4Addr]| -> Netns {
            let name = format!("{}{role}-{short}", slot.prefix());
            crate::netns::wire_to_hub(&hub, &slot, &name, ip, extra)
        };
        let client = wire("client", addrs.client, &[]);
        client.set_resolv_conf(&resolv);
        let gw = wire("gateway", addrs.gateway, &[]);
        gw.set_resolv_conf(&format!(
            "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             options timeout:1 attempts:2\n",
            addrs.dns
        ));
        let backend = wire("backend", addrs.httpbin, &[addrs.tls_backend]);
        backend.set_resolv_conf(&resolv);

        let certs = GatewayCerts::generate(&dir_path, addrs.gateway);
        let config = ConfigDir::create(&dir_path.join("config"));
        config.write(MESH_FILE, &mesh_configmap("ALLOW_ANY", ""));
        config.write(
            "service-httpbin.yaml",
            &service_with_endpoint_yaml(
                "httpbin",
                addrs.httpbin_vip,
                "http",
                HTTPBIN_PORT,
                addrs.httpbin,
            ),
        );
        config.write(
            "service-tls-backend.yaml",
            &service_with_endpoint_yaml(
                "tls-backend",
                addrs.tls_backend_vip,
                "https",
                TLS_BACKEND_PORT,
                addrs.tls_backend,
            ),
        );

        let mut env = GatewayEnv {
            name: test.to_string(),
            gateway: None,
            servers: Vec::new(),
            client,
            gw,
            backend,
            hub,
            addrs,
            extra_hosts: Vec::new(),
            config,
            certs,
            logs: LogBook::default(),
            starts: 0,
            dir: Some(dir),
            dir_path,
            slot,
        };
        env.start_servers();
        eprintln!(
            "[e2e {test}] gateway world ready in {:.1}s: client {} ({}), gateway {} ({}), backend {} ({}), dir {}",
            started.elapsed().as_secs_f64(),
            env.client.name(),
            env.addrs.client,
            env.gw.name(),
            env.addrs.gateway,
            env.backend.name(),
            env.addrs.httpbin,
            env.dir_path.display()
        );
        env
    }

    /// The test's temporary directory (logs, config, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The slot this environment holds.
    pub fn slot(&self) -> u8 {
        self.slot.index()
    }

    fn start_servers(&mut self) {
        let a = self.addrs;
        let mut records: Vec<(&str, Ipv4Addr)> =
            GATEWAY_NAMES.iter().map(|n| (*n, a.gateway)).collect();
        records.push((HTTPBIN_FQDN, a.httpbin_vip));
        records.push((TLS_BACKEND_FQDN, a.tls_backend_vip));
        let dns = dnsmasq_command(&self.hub, a.dns, &self.dir_path, &records);
        self.servers.push(Proc::spawn(
            "dnsmasq",
            dns,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
        let http = self.gunicorn(&format!("{}:{HTTPBIN_PORT}", a.httpbin), None);
        let tls = self.gunicorn(
            &format!("{}:{TLS_BACKEND_PORT}", a.tls_backend),
            Some(&self.certs.backend.clone()),
        );
        // SIGINT is gunicorn's quick shutdown.
        self.servers.push(Proc::spawn(
            "httpbin",
            http,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGINT,
        ));
        self.servers.push(Proc::spawn(
            "tls-backend",
            tls,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGINT,
        ));
        let (hub, dir) = (self.hub.name().to_string(), self.dir_path.clone());
        self.wait_backend("httpbin", || {
            Curl::in_netns(
                &hub,
                &dir,
                &format!("http://{}:{HTTPBIN_PORT}/status/204", a.httpbin),
            )
        });
        let backend_ca = self.certs.backend_ca.cert.clone();
        self.wait_backend("the TLS backend", || {
            Curl::in_netns(
                &hub,
                &dir,
                &format!("https://{SECURE_HOST}:{TLS_BACKEND_PORT}/status/204"),
            )
            .resolve(SECURE_HOST, TLS_BACKEND_PORT, a.tls_backend)
            .cacert(&backend_ca)
        });
        for name in GATEWAY_NAMES {
            self.wait_resolves(&self.client, name, a.gateway);
        }
    }

    fn gunicorn(&self, bind: &str, tls: Option<&Leaf>) -> Command {
        servers::httpbin_command(
            &self.backend,
            &self.dir_path,
            &[bind.to_string()],
            tls.map(|l| (l.cert.as_path(), l.key.as_path())),
        )
    }

    fn wait_backend(&mut self, what: &str, make: impl Fn() -> Curl) {
        servers::wait_for_204(
            what,
            Duration::from_secs(15),
            &mut self.servers,
            &self.logs,
            make,
        );
    }

    fn wait_resolves(&self, ns: &Netns, name: &str, ip: Ipv4Addr) {
        servers::wait_resolves(ns, name, ip);
    }

    /// Writes `yaml` into the config directory as `file` (atomically). Resources keep the
    /// namespace they name (`default` when they name none).
    pub fn apply(&self, file: &str, yaml: &str) {
        self.config.write(file, yaml);
    }

    /// Deletes `file` from the config directory.
    pub fn delete(&self, file: &str) {
        self.config.remove(file);
    }

    /// The `sluice gateway` arguments (after `sluice`).
    pub fn gateway_args(&self, labels: &str) -> Vec<String> {
        vec![
            "gateway".into(),
            "--config".into(),
            self.config.path().to_string_lossy().into_owned(),
            "--namespace".into(),
            GATEWAY_NAMESPACE.into(),
            "--labels".into(),
            labels.into(),
            "--admin-port".into(),
            ADMIN_PORT.to_string(),
            "--status-port".into(),
            STATUS_PORT.to_string(),
            "--stats-port".into(),
            STATS_PORT.to_string(),
        ]
    }

    /// Starts `sluice gateway` (labels `istio=ingressgateway`) as root in the gateway namespace
    /// and waits for `/healthz/ready` (20 s). Panics with every log if it exits or does not get
    /// ready.
    pub fn start_gateway(&mut self) -> &Gateway {
        self.start_gateway_with_labels(GATEWAY_LABELS)
    }

    /// [`GatewayEnv::start_gateway`] with other `--labels`.
    pub fn start_gateway_with_labels(&mut self, labels: &str) -> &Gateway {
        assert!(
            self.gateway.is_none(),
            "a gateway is already running in this environment"
        );
        let args = self.gateway_args(labels);
        let gateway = Gateway::launch(&self.gw, &self.dir_path, &self.logs, &mut self.starts, args);
        self.gateway.insert(gateway)
    }

    /// Starts `sluice gateway` with `args` (after `sluice`; see [`GatewayEnv::gateway_args`]) and
    /// waits for it to get ready.
    pub fn start_gateway_with_args(&mut self, args: Vec<String>) -> &Gateway {
        assert!(
            self.gateway.is_none(),
            "a gateway is already running in this environment"
        );
        let gateway = Gateway::launch(&self.gw, &self.dir_path, &self.logs, &mut self.starts, args);
        self.gateway.insert(gateway)
    }

    /// Runs `cmd` (made with `self.gw.cmd(..)`, in the gateway's namespace) as a server of the
    /// environment, stopped with it; its output is in the logs under `label`.
    pub fn spawn_server(&mut self, label: &str, cmd: Command) {
        let proc = Proc::spawn(label, cmd, &self.dir_path, &self.logs, None, libc::SIGTERM);
        self.servers.push(proc);
    }

    /// Starts `sluice gateway` (labels `istio=ingressgateway`) without waiting for it to get
    /// ready (to look at why it is not).
    pub fn start_gateway_unready(&mut self) -> &mut Gateway {
        assert!(
            self.gateway.is_none(),
            "a gateway is already running in this environment"
        );
        let args = self.gateway_args(GATEWAY_LABELS);
        let gateway = Gateway::spawn(&self.gw, &self.dir_path, &self.logs, &mut self.starts, args);
        self.gateway.insert(gateway)
    }

    /// The running gateway, mutable (to wait for it).
    pub fn gateway_mut(&mut self) -> &mut Gateway {
        self.gateway
            .as_mut()
            .expect("no gateway started: call start_gateway first")
    }

    /// Takes the running gateway out of the environment (the caller stops it, or drops it).
    pub fn take_gateway(&mut self) -> Option<Gateway> {
        self.gateway.take()
    }

    /// One more namespace on the hub with address `10.234.<slot>.<host>` (e.g. a second gateway
    /// replica); its name ends with `role`. Returns its name.
    pub fn add_host(&mut self, role: &str, host: u8) -> String {
        let name = format!(
            "{}{role}-{}",
            self.slot.prefix(),
            self.gw.name().rsplit('-').next().unwrap_or("x")
        );
        let ip = Ipv4Addr::new(10, 234, self.addrs.subnet, host);
        let ns = crate::netns::wire_to_hub(&self.hub, &self.slot, &name, ip, &[]);
        ns.set_resolv_conf(&format!(
            "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             options timeout:1 attempts:2\n",
            self.addrs.dns
        ));
        self.extra_hosts.push(ns);
        name
    }

    /// Starts `sluice gateway` (labels `istio=ingressgateway`, the environment's config) in the
    /// namespace `add_host` made, and waits for it to get ready. The caller owns it.
    pub fn spawn_gateway_in(&mut self, netns: &str) -> Gateway {
        let ns = self
            .extra_hosts
            .iter()
            .find(|n| n.name() == netns)
            .unwrap_or_else(|| panic!("no namespace {netns} made by add_host"));
        let args = self.gateway_args(GATEWAY_LABELS);
        Gateway::launch(ns, &self.dir_path, &self.logs, &mut self.starts, args)
    }

    /// Stops the gateway (SIGTERM, then SIGKILL after 3 s).
    pub fn stop_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
    }

    /// Stops the gateway and starts a new one (same labels).
    pub fn restart_gateway(&mut self) -> &Gateway {
        let labels = self
            .gateway
            .as_ref()
            .and_then(|g| {
                g.args
                    .iter()
                    .position(|a| a == "--labels")
                    .and_then(|i| g.args.get(i + 1).cloned())
            })
            .unwrap_or_else(|| GATEWAY_LABELS.to_string());
        self.stop_gateway();
        self.start_gateway_with_labels(&labels)
    }

    /// The running gateway; panics if none was started.
    pub fn gateway(&self) -> &Gateway {
        self.gateway
            .as_ref()
            .expect("no gateway started: call start_gateway first")
    }

    /// The gateway's TEXT access log lines so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.gateway().access_log()
    }

    /// Waits (5 s) for a gateway access log line that `pred` accepts.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        self.gateway().wait_for_log(what, pred)
    }

    /// The gateway's metrics, parsed.
    pub fn metrics(&self) -> Vec<metrics::Sample> {
        self.gateway().metrics()
    }

    /// A curl run from the client namespace, trusting the gateway CA (`--cacert`; `.insecure()`
    /// for the seed's `-k`, `.cacert(other)` to trust another CA).
    pub fn curl(&self, url: &str) -> Curl {
        Curl::new(&self.client, &self.dir_path, url)
            .cacert(&self.certs.ca.cert)
            .max_time(15.0)
    }

    /// `http://<gateway IP>[:port]<path>`.
    pub fn http_url(&self, port: u16, path: &str) -> String {
        if port == 80 {
            format!("http://{}{path}", self.addrs.gateway)
        } else {
            format!("http://{}:{port}{path}", self.addrs.gateway)
        }
    }

    /// `https://<gateway IP>[:port]<path>` (no SNI: curl sends none for an IP address).
    pub fn https_url(&self, port: u16, path: &str) -> String {
        if port == 443 {
            format!("https://{}{path}", self.addrs.gateway)
        } else {
            format!("https://{}:{port}{path}", self.addrs.gateway)
        }
    }

    /// A curl run to `https://<host>:<port><path>`, connected to the gateway with `--resolve`
    /// (SNI and `Host` are `host`).
    pub fn curl_host(&self, host: &str, port: u16, path: &str) -> Curl {
        let url = if port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        };
        self.curl(&url).resolve(host, port, self.addrs.gateway)
    }

    /// Polls (up to `timeout`) with a fresh curl from `make` until `ok` accepts the result; returns
    /// it. Panics with the last result otherwise. For config that must become live.
    #[track_caller]
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        make: impl Fn() -> Curl,
        ok: impl Fn(&CurlResult) -> bool,
    ) -> CurlResult {
        eventually(what, timeout, || {
            let r = make().max_time(5.0).run();
            if ok(&r) {
                Ok(r)
            } else {
                Err(format!("\n{r}"))
            }
        })
    }

    /// The certificate the gateway presents on `port` for `sni` (`None`: no SNI), read with
    /// `openssl s_client` from the client namespace.
    pub fn peer_cert(&self, sni: Option<&str>, port: u16) -> Result<PeerCert, String> {
        peer_cert(
            &self.client,
            &format!("{}:{port}", self.addrs.gateway),
            sni,
            &[],
        )
    }

    /// What a server (`dnsmasq`, `httpbin`, `tls-backend`) wrote so far.
    pub fn server_log(&self, label: &str) -> String {
        crate::servers::server_log(&self.servers, label)
    }

    /// Replaces `dst_cert` and `dst_key` with copies of `leaf`'s files, each by an atomic rename
    /// (key first, then the certificate, back to back), as a certificate manager renews them.
    pub fn replace_cert_files(&self, leaf: &Leaf, dst_cert: &Path, dst_key: &Path) {
        let stage = |src: &Path, dst: &Path| -> PathBuf {
            let mut name = dst.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".{}.new", std::process::id()));
            let tmp = dst.with_file_name(name);
            std::fs::copy(src, &tmp)
                .unwrap_or_else(|e| panic!("copy {} → {}: {e}", src.display(), tmp.display()));
            chmod(&tmp, 0o644);
            tmp
        };
        let (k, c) = (stage(&leaf.key, dst_key), stage(&leaf.cert, dst_cert));
        for (tmp, dst) in [(k, dst_key), (c, dst_cert)] {
            std::fs::rename(&tmp, dst)
                .unwrap_or_else(|e| panic!("rename {} → {}: {e}", tmp.display(), dst.display()));
        }
    }

    /// Copies `leaf`'s certificate and key to `<dir>/<name>.pem` / `.key` (files a Gateway can
    /// name and a test can later replace); returns (cert, key).
    pub fn install_cert_files(&self, leaf: &Leaf, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir_path.join("gateway-certs");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        chmod(&dir, 0o755);
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        self.replace_cert_files(leaf, &cert, &key);
        (cert, key)
    }
}

impl Drop for GatewayEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut extra = String::new();
            if let Some(status) = self.gateway.as_mut().and_then(|g| g.exited()) {
                extra.push_str(&format!("!!! the gateway had exited: {status}\n"));
            }
            eprintln!(
                "\n════════ e2e test {} failed: logs (hub {}, client {} {}, gateway {} {}, backend {} {}/{}) ════════\n\
                 {extra}{}════════ end of logs for {} ════════",
                self.name,
                self.hub.name(),
                self.client.name(),
                self.addrs.client,
                self.gw.name(),
                self.addrs.gateway,
                self.backend.name(),
                self.addrs.httpbin,
                self.addrs.tls_backend,
                self.logs.dump(200),
                self.name
            );
        }
        crate::env::keep_dir_if_asked(&mut self.dir);
        // Fields drop next, in order: gateway, servers, namespaces, …, temp dir, slot.
    }
}

/// The certificate a TLS server at `addr` (`ip:port`) presents, from `openssl s_client` run in
/// `ns` with `sni` (`-servername`, or `-noservername`) and any `extra` s_client arguments
/// (e.g. `-cert`/`-key`). `Err` with openssl's output when no certificate came back.
pub fn peer_cert(
    ns: &Netns,
    addr: &str,
    sni: Option<&str>,
    extra: &[&str],
) -> Result<PeerCert, String> {
    let openssl = &tools().openssl;
    let mut cmd = ns.cmd(openssl);
    cmd.args(["s_client", "-connect", addr]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    cmd.args(extra);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl s_client: {e}"))?;
    let handshake = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let pem = match (handshake.find(begin), handshake.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}\n", &handshake[b..e + end.len()]),
        _ => {
            return Err(format!(
                "openssl s_client -connect {addr} ({}) got no certificate:\n{handshake}",
                sni.unwrap_or("no SNI")
            ))
        }
    };
    use std::io::Write;
    let mut child = Command::new(openssl)
        .args(["x509", "-noout", "-subject", "-issuer", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl x509: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(pem.as_bytes())
        .map_err(|e| format!("write to openssl x509: {e}"))?;
    let parsed = child
        .wait_with_output()
        .map_err(|e| format!("openssl x509: {e}"))?;
    let text = String::from_utf8_lossy(&parsed.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let (Some(subject), Some(issuer), Some(serial)) =
        (field("subject="), field("issuer="), field("serial="))
    else {
        return Err(format!("cannot read the certificate: {text}\n{handshake}"));
    };
    let serial = u64::from_str_radix(&serial, 16)
        .map_err(|e| format!("serial {serial}: {e}\n{handshake}"))?;
    Ok(PeerCert {
        subject,
        issuer,
        serial,
        handshake,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_names() {
        assert_eq!(
            super::cn_of("O = sluice e2e, CN = a.example.com"),
            "a.example.com"
        );
        assert_eq!(super::cn_of("O=x,CN=b"), "b");
        assert_eq!(super::cn_of("O = x"), "");
    }
}
