//! A small Kubernetes-like mesh in network namespaces, for the "services inside the mesh" scenarios
//! (seed 004): pods with their own IPs on one bridge, Kubernetes Services with cluster IPs, DNS
//! with the cluster's search path, and an external API host.
//!
//! ```text
//!   netns slNNN-hub-<test>                               netns slNNN-<pod name>  (one per pod)
//!   ┌───────────────────────────────────────────┐        ┌──────────────────────────────────────┐
//!   │ br0  10.234.N.1/24   dnsmasq :53          │  veth  │ eth0 10.234.N.40+                    │
//!   │      10.234.N.30     worldclockapi.com :80├────────┤ app: apps/chain.py :8080 (root)      │
//!   │                      (clock app; :81 shut)│        │ sluice init (-b '*': inbound → 15006)│
//!   └───────────────────────────────────────────┘        │ sluice sidecar (uid 1337)            │
//!                                                        └──────────────────────────────────────┘
//!   Services: customer.tutorial.svc.cluster.local → 10.234.N.100, preference → .101, … (cluster
//!   IPs that no interface owns: only a sidecar's capture makes them reachable)
//! ```
//!
//! Every pod's `resolv.conf` points at the hub's dnsmasq with
//! `search tutorial.svc.cluster.local svc.cluster.local cluster.local`, so `http://preference:8080/`
//! works as in a cluster. All sidecars watch one config directory ([`MeshEnv::config`]), which
//! holds the mesh ConfigMap (ALLOW_ANY, access log on stdout), a `Service` per app (selector
//! `app=<app>`, port 8080 named `http`, `clusterIP`) and a `WorkloadEntry` per pod (its address and
//! `app`/`version` labels), all in namespace `tutorial`.
//!
//! With [`MeshEnv::start_control`], `sluice control` serves that directory from the hub instead
//! (`10.234.N.5`, named `istiod.istio-system.svc.cluster.local` by the mesh's DNS; a
//! [`ControlPlane`], which the egress harness uses too), and the sidecars started afterwards take
//! their config from it (`--xds istiod.istio-system.svc.cluster.local:15010`).
//!
//! No namespace has a default route; the only addresses ever used are the test's own subnet and
//! loopback. Teardown (pods, servers, namespaces, temporary directory) happens on drop, also when
//! the test panics, after every log has been printed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::accesslog::AccessLogEntry;
use crate::config::{in_namespace, mesh_configmap, ConfigDir};
use crate::curl::{Curl, CurlResult};
use crate::env::{dnsmasq_command, Workspace};
use crate::netns::Netns;
use crate::prereq::tools;
use crate::process::{LogBook, Proc};
use crate::servers;
use crate::sidecar::{self, Sidecar, SidecarOpts};
use crate::slot::Slot;
use crate::wait::settle;

/// The Kubernetes namespace of every pod, Service and WorkloadEntry (`--namespace` of the sidecars).
pub const NAMESPACE: &str = "tutorial";
/// The port every app listens on (and its Service's port).
pub const APP_PORT: u16 = 8080;
/// The external API of seed 004.
pub const CLOCK_HOST: &str = "worldclockapi.com";
/// The URL recommendation v3 calls.
pub const CLOCK_URL: &str = "http://worldclockapi.com/api/json/cet/now";
/// The mesh ConfigMap's file in the config directory.
pub const MESH_FILE: &str = "istio-configmap.yaml";
/// The DNS search path of every pod, as in a pod of namespace `tutorial`.
pub const SEARCH: &str = "tutorial.svc.cluster.local svc.cluster.local cluster.local";
/// Inbound ports never captured (`sluice init -d`): the sidecar's own.
pub const INBOUND_EXCLUDE: &str = "15090,15021,15000";

const DNS_HOST: u8 = 1;
const CLOCK_HOST_OCTET: u8 = 30;
const FIRST_POD: u8 = 40;
const LAST_POD: u8 = 99;
const FIRST_VIP: u8 = 100;
const LAST_VIP: u8 = 199;

/// `apps/chain.py`: the tutorial's apps and the clock API.
pub fn chain_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/chain.py")
}

/// The Python that runs the apps (the test venv's, already checked by [`tools`]).
fn python() -> PathBuf {
    tools().venv.join("bin/python")
}

/// What to run in one pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name: the namespace name's suffix, the WorkloadEntry's name, `POD_NAME` of the app.
    pub name: String,
    /// `app` label (and the Service the pod belongs to).
    pub app: String,
    /// `version` label.
    pub version: String,
    /// The app's port; `None`: no app process and no WorkloadEntry (a client pod: curl only).
    pub port: Option<u16>,
    /// Environment of `apps/chain.py` (after `MODE`, `POD_NAME`, `VERSION`, `PORT`).
    pub env: Vec<(String, String)>,
    /// Whether the pod gets `sluice init` and a sidecar.
    pub sidecar: bool,
}

impl PodSpec {
    /// A pod running `chain.py` in mode `app` on port 8080, with a sidecar.
    pub fn new(name: &str, app: &str, version: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            app: app.into(),
            version: version.into(),
            port: Some(APP_PORT),
            env: vec![("MODE".into(), app.into())],
            sidecar: true,
        }
    }

    /// The pod the tests curl from (`app=client`), with a sidecar and no app.
    pub fn client() -> PodSpec {
        PodSpec {
            port: None,
            env: Vec::new(),
            ..PodSpec::new("client", "client", "v1")
        }
    }

    /// customer-v1, calling `http://preference:8080/`.
    pub fn customer() -> PodSpec {
        PodSpec::new("customer-v1", "customer", "v1")
            .env("NEXT_URL", &format!("http://preference:{APP_PORT}/"))
    }

    /// preference-v1, calling `http://recommendation:8080/`.
    pub fn preference() -> PodSpec {
        PodSpec::new("preference-v1", "preference", "v1")
            .env("NEXT_URL", &format!("http://recommendation:{APP_PORT}/"))
    }

    /// recommendation-<version> (no clock call; add `.env("CLOCK_URL", CLOCK_URL)` for v3's).
    pub fn recommendation(version: &str) -> PodSpec {
        PodSpec::new(
            &format!("recommendation-{version}"),
            "recommendation",
            version,
        )
    }

    /// Sets (or replaces) an environment variable of the app.
    pub fn env(mut self, key: &str, value: &str) -> PodSpec {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// No `sluice init`, no sidecar: the app talks to the network directly.
    pub fn without_sidecar(mut self) -> PodSpec {
        self.sidecar = false;
        self
    }

    /// `app=X,version=Y`, for `--labels`.
    pub fn labels(&self) -> String {
        format!("app={},version={}", self.app, self.version)
    }
}

/// One running pod. Field order is teardown order: sidecar, app, namespace.
pub struct Pod {
    sidecar: Option<Sidecar>,
    app: Option<Proc>,
    pub ns: Netns,
    pub spec: PodSpec,
    pub ip: Ipv4Addr,
    dir: PathBuf,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A curl run from this pod (as root, so captured by its sidecar if it has one).
    pub fn curl(&self, url: &str) -> Curl {
        Curl::new(&self.ns, &self.dir, url).max_time(15.0)
    }

    /// `GET url` from this pod.
    pub fn get(&self, url: &str) -> CurlResult {
        self.curl(url).run()
    }

    /// The pod's sidecar; panics if it has none.
    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar
            .as_ref()
            .unwrap_or_else(|| panic!("pod {} has no sidecar", self.spec.name))
    }

    /// The sidecar's TEXT access log lines so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.sidecar().access_log()
    }

    /// Waits (5 s) for an access log line of this pod's sidecar that `pred` accepts.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        self.sidecar().wait_for_log(what, pred)
    }

    /// What the app wrote so far (one line per request it served, with the peer address).
    pub fn app_log(&self) -> String {
        self.app.as_ref().map(|p| p.stdout()).unwrap_or_default()
    }

    /// The pod's nat table.
    pub fn iptables_nat(&self) -> String {
        sidecar::iptables_nat(&self.ns)
    }

    /// `n` GETs of `url` from this pod in one curl run (URL globbing `n=[1-N]` added to the query,
    /// one keep-alive connection, one after the other); returns (status, body) of each. A transfer
    /// that got no response has status 0 and curl's error in the body.
    pub fn get_many(&self, url: &str, n: usize) -> Vec<(u16, String)> {
        assert!(n > 0);
        let sep = if url.contains('?') { '&' } else { '?' };
        let glob = format!("{url}{sep}n=[1-{n}]");
        let out = self
            .ns
            .cmd(&tools().curl)
            .args([
                "-sS",
                "--noproxy",
                "*",
                "--connect-timeout",
                "5",
                "--max-time",
                "60",
                "-w",
                "\u{1}%{http_code}\u{2}",
            ])
            .arg(&glob)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl {glob}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: Vec<(u16, String)> = stdout
            .split('\u{2}')
            .filter(|piece| !piece.is_empty())
            .map(|piece| match piece.rsplit_once('\u{1}') {
                Some((body, code)) => (code.parse().unwrap_or(0), body.to_string()),
                None => (0, piece.to_string()),
            })
            .collect();
        assert_eq!(
            results.len(),
            n,
            "curl {glob} from {}: expected {n} responses, got {} (exit {}); stderr: {}\nstdout: {stdout}",
            self.spec.name,
            results.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        results
    }
}

/// The addresses of one mesh environment (subnet `10.234.<slot>.0/24`).
#[derive(Debug, Clone, Copy)]
pub struct MeshAddrs {
    pub subnet: u8,
    /// The hub bridge's address; dnsmasq listens here.
    pub dns: Ipv4Addr,
    /// `worldclockapi.com`: the clock app on :80, nothing on :81.
    pub clock: Ipv4Addr,
}

impl MeshAddrs {
    fn new(subnet: u8) -> MeshAddrs {
        MeshAddrs {
            subnet,
            dns: Ipv4Addr::new(10, 234, subnet, DNS_HOST),
            clock: Ipv4Addr::new(10, 234, subnet, CLOCK_HOST_OCTET),
        }
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 234, self.subnet, host)
    }

    pub fn cidr(&self) -> String {
        format!("10.234.{}.0/24", self.subnet)
    }
}

/// One mesh test's world. Field order is teardown order: pods (sidecars, apps, namespaces), the
/// control plane, hub servers, hub namespace, temporary directory, slot.
pub struct MeshEnv {
    pub name: String,
    pods: Vec<Pod>,
    /// `sluice control` on the hub, once [`MeshEnv::start_control`] was called.
    control: Option<ControlPlane>,
    /// `--xds` of the sidecars started from now on (`None`: `--config DIR`).
    xds: Option<String>,
    servers: Vec<Proc>,
    /// The hub: bridge, DNS, worldclockapi.com.
    pub hub: Netns,
    pub addrs: MeshAddrs,
    /// The config directory every sidecar watches.
    pub config: ConfigDir,
    pub logs: LogBook,
    /// app → cluster IP of its Service.
    services: BTreeMap<String, Ipv4Addr>,
    hosts_file: PathBuf,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    slot: Slot,
}

impl MeshEnv {
    /// Builds the hub (bridge, dnsmasq, worldclockapi.com) and writes the mesh ConfigMap
    /// (ALLOW_ANY, access log on stdout); no pods yet.
    pub fn new(test: &str) -> MeshEnv {
        let started = Instant::now();
        tools();
        let script = chain_script();
        assert!(
            script.is_file(),
            "the test apps are missing: {} (part of this crate)",
            script.display()
        );
        let Workspace {
            slot,
            short,
            dir,
            path: dir_path,
        } = Workspace::new(test);
        let addrs = MeshAddrs::new(slot.index());
        let hub = Netns::create(&format!("{}hub-{short}", slot.prefix()));
        hub.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
        hub.ip(&["addr", "add", &format!("{}/24", addrs.dns), "dev", "br0"]);
        hub.ip(&["addr", "add", &format!("{}/32", addrs.clock), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        hub.set_resolv_conf(&resolv_conf(addrs.dns));

        let config = ConfigDir::create(&dir_path.join("config"));
        config.write(MESH_FILE, &mesh_configmap("ALLOW_ANY", ""));
        let hosts_file = dir_path.join("cluster.hosts");
        std::fs::write(&hosts_file, "")
            .unwrap_or_else(|e| panic!("write {}: {e}", hosts_file.display()));

        let mut env = MeshEnv {
            name: test.to_string(),
            pods: Vec::new(),
            control: None,
            xds: None,
            servers: Vec::new(),
            hub,
            addrs,
            config,
            logs: LogBook::default(),
            services: BTreeMap::new(),
            hosts_file,
            dir: Some(dir),
            dir_path,
            slot,
        };
        env.start_hub_servers();
        eprintln!(
            "[e2e {test}] mesh hub ready in {:.1}s: netns {}, subnet {}, dir {}",
            started.elapsed().as_secs_f64(),
            env.hub.name(),
            env.addrs.cidr(),
            env.dir_path.display()
        );
        env
    }

    /// The test's temporary directory (logs, config, FAIL_FILEs).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Waits until the hub's dnsmasq answers `name` with `ip`.
    fn wait_resolves(&self, name: &str, ip: Ipv4Addr) {
        servers::wait_resolves(&self.hub, name, ip);
    }

    /// A path in the test directory for a pod's `FAIL_FILE` (the file does not exist yet).
    pub fn fail_file(&self, pod: &str) -> PathBuf {
        self.dir_path.join(format!("fail-{pod}"))
    }

    fn start_hub_servers(&mut self) {
        let a = self.addrs;
        let mut dns = dnsmasq_command(&self.hub, a.dns, &self.dir_path, &[(CLOCK_HOST, a.clock)]);
        dns.arg(format!("--addn-hosts={}", self.hosts_file.display()));
        self.servers.push(Proc::spawn(
            "dnsmasq",
            dns,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
        let mut clock = self.hub.cmd(python());
        clock
            .arg(chain_script())
            .env("MODE", "clock")
            .env("BIND", a.clock.to_string())
            .env("PORT", "80")
            .env("POD_NAME", CLOCK_HOST)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        self.servers.push(Proc::spawn(
            "worldclockapi",
            clock,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
        self.wait_http_ok(
            &format!("the clock app on {}:80", a.clock),
            None,
            &format!("http://{}/ready", a.clock),
        );
        self.wait_resolves(CLOCK_HOST, a.clock);
    }

    /// Polls `url` (from `pod`, or from the hub) until it answers 200, for up to 15 s; panics with
    /// the logs if it does not or a server exits.
    fn wait_http_ok(&mut self, what: &str, pod: Option<usize>, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let curl = match pod {
                Some(i) => self.pods[i].curl(url),
                None => Curl::new(&self.hub, &self.dir_path, url),
            };
            let r = curl.max_time(2.0).run();
            if r.exit_code == 0 && r.status == 200 {
                return;
            }
            let dead = self
                .servers
                .iter_mut()
                .chain(self.pods.iter_mut().filter_map(|p| p.app.as_mut()))
                .find_map(|p| p.exited().map(|s| (p.label().to_string(), s)));
            if let Some((label, status)) = dead {
                panic!(
                    "{label} exited ({status}) while waiting for {what}\n{}",
                    self.logs.dump(60)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} did not answer 200 within 15 s; last try:\n{r}\n{}",
                    self.logs.dump(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds one pod; returns its IP. See [`MeshEnv::add_pods`].
    pub fn add_pod(&mut self, spec: PodSpec) -> Ipv4Addr {
        self.add_pods(vec![spec])[0]
    }

    /// Adds pods: for each, a namespace wired into the hub bridge, the Service of its app (once per
    /// app) and its WorkloadEntry in the config directory, and DNS for the Service; then starts the
    /// apps (waiting for `GET /ready`), then the sidecars (`sluice init` with inbound capture, then
    /// `sluice sidecar --namespace tutorial --labels app=…,version=… --inbound-port 15006`, waiting
    /// for `/healthz/ready`). All the configuration is written before any process starts, so the
    /// new sidecars start with the whole mesh; sidecars that were already running get the config
    /// live and are given the contract's second to apply it. Returns the pods' IPs in order.
    pub fn add_pods(&mut self, specs: Vec<PodSpec>) -> Vec<Ipv4Addr> {
        let had_sidecars = self.pods.iter().any(|p| p.sidecar.is_some());
        let first_new = self.pods.len();
        let mut ips = Vec::new();
        for spec in specs {
            assert!(
                !self.pods.iter().any(|p| p.spec.name == spec.name),
                "a pod named {} already exists",
                spec.name
            );
            let host = FIRST_POD + self.pods.len() as u8;
            assert!(
                host <= LAST_POD,
                "too many pods (at most {})",
                LAST_POD - FIRST_POD + 1
            );
            let ip = self.addrs.ip(host);
            let ns = self.wire_pod(&spec.name, host, ip);
            if let Some(port) = spec.port {
                if !self.services.contains_key(&spec.app) {
                    let vip = self.addrs.ip(FIRST_VIP + self.services.len() as u8);
                    assert!(vip.octets()[3] <= LAST_VIP, "too many services");
                    self.services.insert(spec.app.clone(), vip);
                    self.config.write(
                        &format!("service-{}.yaml", spec.app),
                        &service_yaml(&spec.app, vip, port),
                    );
                }
                self.config.write(
                    &format!("workload-{}.yaml", spec.name),
                    &workload_entry_yaml(&spec, ip),
                );
            }
            ips.push(ip);
            self.pods.push(Pod {
                sidecar: None,
                app: None,
                ns,
                spec,
                ip,
                dir: self.dir_path.clone(),
            });
        }
        self.update_dns();

        for i in first_new..self.pods.len() {
            self.start_app(i);
        }
        if had_sidecars {
            // The running sidecars learn the new Services and WorkloadEntries from the watched
            // directory; the contract gives them a second.
            settle();
        }
        for i in first_new..self.pods.len() {
            if self.pods[i].spec.sidecar {
                self.start_sidecar(i);
            }
        }
        ips
    }

    /// Creates the pod's namespace and its veth into the hub bridge; writes its resolv.conf.
    fn wire_pod(&self, name: &str, host: u8, ip: Ipv4Addr) -> Netns {
        debug_assert_eq!(host, ip.octets()[3], "veth names follow the address");
        let name = format!("{}{name}", self.slot.prefix());
        let ns = crate::netns::wire_to_hub(&self.hub, &self.slot, &name, ip, &[]);
        ns.set_resolv_conf(&resolv_conf(self.addrs.dns));
        ns
    }

    /// Rewrites dnsmasq's hosts file with every Service and makes it re-read it (SIGHUP).
    fn update_dns(&self) {
        let mut text = String::new();
        for (app, vip) in &self.services {
            text.push_str(&format!("{vip} {app}.{NAMESPACE}.svc.cluster.local\n"));
        }
        if let Some(cp) = &self.control {
            text.push_str(&format!("{} {ISTIOD_FQDN}\n", cp.ip));
        }
        let current = std::fs::read_to_string(&self.hosts_file).unwrap_or_default();
        if current == text {
            return;
        }
        std::fs::write(&self.hosts_file, &text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.hosts_file.display()));
        let dns = self
            .servers
            .iter()
            .find(|p| p.label() == "dnsmasq")
            .expect("dnsmasq runs");
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(dns.pid() as libc::pid_t, libc::SIGHUP) };
        for (app, vip) in &self.services {
            self.wait_resolves(&format!("{app}.{NAMESPACE}.svc.cluster.local"), *vip);
        }
        if let Some(cp) = &self.control {
            self.wait_resolves(ISTIOD_FQDN, cp.ip);
        }
    }

    fn start_app(&mut self, i: usize) {
        let pod = &self.pods[i];
        let Some(port) = pod.spec.port else { return };
        let mut cmd = pod.ns.cmd(python());
        cmd.arg(chain_script())
            .env("POD_NAME", &pod.spec.name)
            .env("VERSION", &pod.spec.version)
            .env("PORT", port.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for (k, v) in &pod.spec.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(
            &format!("app-{}", pod.spec.name),
            cmd,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        );
        self.pods[i].app = Some(proc);
        let what = format!("app {} on 127.0.0.1:{port}", self.pods[i].spec.name);
        self.wait_http_ok(&what, Some(i), &format!("http://127.0.0.1:{port}/ready"));
    }

    fn start_sidecar(&mut self, i: usize) {
        let pod = &self.pods[i];
        let mut opts = SidecarOpts::captured()
            .inbound("*", INBOUND_EXCLUDE)
            .namespace(NAMESPACE)
            .labels(&pod.spec.labels());
        if let Some(servers) = &self.xds {
            opts = opts
                .xds(servers)
                .arg("--xds-node-id")
                .arg(&self.node_id(&pod.spec.name));
        }
        let sc = sidecar::launch(
            &pod.ns,
            &self.dir_path,
            &self.logs,
            &format!("sidecar-{}", pod.spec.name),
            self.config.path(),
            opts,
        );
        self.pods[i].sidecar = Some(sc);
    }

    /// The pod named `name`; panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod named {name}"))
    }

    /// Every pod, in the order added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The cluster IP of an app's Service.
    pub fn service_ip(&self, app: &str) -> Ipv4Addr {
        *self
            .services
            .get(app)
            .unwrap_or_else(|| panic!("no Service for app {app}"))
    }

    /// Writes `yaml` into the config directory as `file`, every resource in namespace `tutorial`
    /// (as `kubectl apply -n tutorial -f`).
    pub fn apply(&self, file: &str, yaml: &str) {
        self.config.write(file, &in_namespace(yaml, NAMESPACE));
    }

    /// A curl run from the hub namespace: no sidecar on this side, so a request to a pod's IP meets
    /// only the pod's inbound capture.
    pub fn hub_curl(&self, url: &str) -> Curl {
        Curl::new(&self.hub, &self.dir_path, url).max_time(15.0)
    }

    /// Starts `sluice control` on the config directory in the hub, on its own address
    /// (`10.234.N.5`, named [`ISTIOD_FQDN`] by the mesh's DNS), and waits until it is ready.
    /// From then on every sidecar starts with `--xds istiod.istio-system.svc.cluster.local:15010`
    /// (and `--xds-node-id`, [`MeshEnv::node_id`]) instead of `--config DIR`: call it before
    /// adding the pods. `mesh.apply`, `mesh.config.write` and the rest reach the sidecars through
    /// the control plane.
    pub fn start_control(&mut self) -> &mut ControlPlane {
        assert!(
            self.control.is_none(),
            "the control plane is already started"
        );
        let cp = ControlPlane::start(
            &self.hub,
            self.addrs.ip(CONTROL_HOST),
            self.config.path(),
            &self.dir_path,
            &self.logs,
        );
        self.control = Some(cp);
        self.update_dns();
        self.xds = Some(format!("{ISTIOD_FQDN}:{XDS_PORT}"));
        self.control_mut()
    }

    /// The control plane; panics if [`MeshEnv::start_control`] was not called.
    pub fn control(&self) -> &ControlPlane {
        self.control
            .as_ref()
            .expect("no control plane: call start_control first")
    }

    /// The control plane, to kill and restart it.
    pub fn control_mut(&mut self) -> &mut ControlPlane {
        self.control
            .as_mut()
            .expect("no control plane: call start_control first")
    }

    /// The node id the sidecar of pod `pod` presents to the control plane
    /// (`sidecar~<pod IP>~<pod>.tutorial~tutorial.svc.cluster.local`).
    pub fn node_id(&self, pod: &str) -> String {
        let ip = self
            .pods
            .iter()
            .find(|p| p.spec.name == pod)
            .map(|p| p.ip)
            .unwrap_or_else(|| panic!("no pod named {pod}"));
        node_id("sidecar", ip, pod, NAMESPACE)
    }

    /// The node ids of every pod with a sidecar.
    pub fn node_ids(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.spec.sidecar)
            .map(|p| self.node_id(&p.spec.name))
            .collect()
    }

    /// What a hub server (`dnsmasq`, `worldclockapi`) wrote so far.
    pub fn server_log(&self, label: &str) -> String {
        crate::servers::server_log(&self.servers, label)
    }
}

impl Drop for MeshEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut extra = String::new();
            for pod in &mut self.pods {
                if let Some(status) = pod.sidecar.as_mut().and_then(|s| s.exited()) {
                    extra.push_str(&format!(
                        "!!! the sidecar of {} had exited: {status}\n",
                        pod.spec.name
                    ));
                }
                if let Some(status) = pod.app.as_mut().and_then(|a| a.exited()) {
                    extra.push_str(&format!(
                        "!!! the app of {} had exited: {status}\n",
                        pod.spec.name
                    ));
                }
            }
            let pods: Vec<String> = self
                .pods
                .iter()
                .map(|p| format!("{} {} ({})", p.spec.name, p.ip, p.ns.name()))
                .collect();
            let services: Vec<String> = self
                .services
                .iter()
                .map(|(a, ip)| format!("{a} {ip}"))
                .collect();
            eprintln!(
                "\n════════ e2e test {} failed: logs (hub netns {}, subnet {}; pods: {}; services: {}) ════════\n\
                 {extra}{}════════ end of logs for {} ════════",
                self.name,
                self.hub.name(),
                self.addrs.cidr(),
                pods.join(", "),
                services.join(", "),
                self.logs.dump(200),
                self.name
            );
        }
        crate::env::keep_dir_if_asked(&mut self.dir);
        // Fields drop next, in order: pods, servers, hub, …, temp dir, slot.
    }
}

fn resolv_conf(dns: Ipv4Addr) -> String {
    format!("nameserver {dns}\nsearch {SEARCH}\noptions timeout:1 attempts:2\n")
}

/// The Kubernetes Service of `app`: selector `app=<app>`, one port named `http`.
pub fn service_yaml(app: &str, cluster_ip: Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {app}
  namespace: {NAMESPACE}
  labels:
    app: {app}
spec:
  clusterIP: {cluster_ip}
  selector:
    app: {app}
  ports:
  - name: http
    port: {port}
    targetPort: {port}
"
    )
}

/// The WorkloadEntry of a pod: its address and `app`/`version` labels.
pub fn workload_entry_yaml(spec: &PodSpec, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  address: {ip}
  labels:
    app: {app}
    version: {version}
",
        name = spec.name,
        app = spec.app,
        version = spec.version
    )
}

// ─── the control plane (`sluice control`), for this harness and the egress one ───

/// The plaintext xDS port of the tests' control plane (istiod's).
pub const XDS_PORT: u16 = 15010;
/// Its monitoring port (istiod's): `/ready`, `/metrics`, `/debug/syncz`.
pub const MONITORING_PORT: u16 = 15014;
/// The last octet of the control plane's address in a hub (`10.234.N.5`: free in the mesh and
/// the egress layouts alike).
pub const CONTROL_HOST: u8 = 5;
/// The name the mesh's DNS gives the control plane, as istiod's Service is named.
pub const ISTIOD_FQDN: &str = "istiod.istio-system.svc.cluster.local";

/// The node id a proxy presents to the control plane, in Istio's form
/// (`sidecar~10.234.7.40~client.tutorial~tutorial.svc.cluster.local`; `router~…` for a gateway),
/// with the pod's own IP and name: every test pod shares the host's hostname, which the default
/// node id is made of, while in a cluster each pod has its own.
pub fn node_id(role: &str, ip: Ipv4Addr, pod: &str, namespace: &str) -> String {
    format!("{role}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

/// `sluice control --config DIR --bind IP --xds-port 15010 --monitoring-port 15014 --name
/// control[-N]` as root in a hub namespace, on an address of its own added to the hub's bridge,
/// so every namespace wired to the hub reaches it (and nothing outside the test does). The Nth
/// start is named `control-N` (its log files and its `--name`, which `proxy-status` shows).
pub struct ControlPlane {
    proc: Option<Proc>,
    netns: String,
    /// The address both ports listen on.
    pub ip: Ipv4Addr,
    config: PathBuf,
    dir: PathBuf,
    logs: LogBook,
    starts: usize,
}

impl ControlPlane {
    /// Adds `ip/32` to `hub`'s `br0`, starts the control plane on it serving `config`, and waits
    /// until it is ready.
    pub(crate) fn start(
        hub: &Netns,
        ip: Ipv4Addr,
        config: &Path,
        dir: &Path,
        logs: &LogBook,
    ) -> ControlPlane {
        hub.ip(&["addr", "add", &format!("{ip}/32"), "dev", "br0"]);
        let mut cp = ControlPlane {
            proc: None,
            netns: hub.name().to_string(),
            ip,
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            logs: logs.clone(),
            starts: 0,
        };
        cp.restart();
        cp
    }

    /// The running replica's `--name` (`control`, then `control-2`, …).
    pub fn name(&self) -> String {
        match self.starts {
            0 | 1 => "control".to_string(),
            n => format!("control-{n}"),
        }
    }

    /// `IP:15010`, for `--xds`.
    pub fn xds_addr(&self) -> String {
        format!("{}:{XDS_PORT}", self.ip)
    }

    /// `IP:15014`, for `sluice proxy-status --control`.
    pub fn monitoring_addr(&self) -> String {
        format!("{}:{MONITORING_PORT}", self.ip)
    }

    /// Whether a control plane process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Starts a new control plane process (the Nth start is `control-N`) on the same address and
    /// ports, and waits (20 s) until its `/ready` answers 200. Panics if one is still running.
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "a control plane is already running ({})",
            self.name()
        );
        self.starts += 1;
        let name = self.name();
        let mut cmd = Command::new(&tools().ip);
        cmd.args(["netns", "exec", &self.netns])
            .arg(crate::prereq::sluice_bin())
            .arg("control")
            .arg("--config")
            .arg(&self.config)
            .args([
                "--bind",
                &self.ip.to_string(),
                "--xds-port",
                &XDS_PORT.to_string(),
                "--monitoring-port",
                &MONITORING_PORT.to_string(),
                "--name",
                &name,
            ]);
        crate::process::scrub_env(&mut cmd);
        if let Some(level) = std::env::var_os("SLUICE_E2E_LOG") {
            cmd.env("SLUICE_LOG", level);
        }
        self.proc = Some(Proc::spawn(
            &name,
            cmd,
            &self.dir,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get("/ready");
            if r.exit_code == 0 && r.status == 200 {
                return;
            }
            if let Some(status) = self.proc.as_mut().and_then(|p| p.exited()) {
                panic!(
                    "`sluice control` ({name}) exited ({status}) before it got ready; last probe:\n{r}\n{}",
                    self.logs.dump(80)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "`sluice control` ({name}) did not answer 200 on http://{}/ready within 20 s; last probe:\n{r}\n{}",
                    self.monitoring_addr(),
                    self.logs.dump(80)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (`libc::SIGKILL`: gone without a word to its proxies; `libc::SIGTERM`: its
    /// own shutdown) and waits (5 s, then SIGKILL) until the process has exited.
    pub fn kill(&mut self, signal: i32) -> std::process::ExitStatus {
        let name = self.name();
        let proc = self
            .proc
            .as_mut()
            .unwrap_or_else(|| panic!("no control plane process to kill"));
        if proc.exited().is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped (so its pid cannot be reused).
            unsafe { libc::kill(proc.pid() as libc::pid_t, signal) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        proc.stop()
            .unwrap_or_else(|| panic!("cannot reap the control plane {name}"))
    }

    /// `GET http://IP:15014<path>` from the hub.
    pub fn get(&self, path: &str) -> CurlResult {
        Curl::in_netns(
            &self.netns,
            &self.dir,
            &format!("http://{}{path}", self.monitoring_addr()),
        )
        .max_time(5.0)
        .run()
    }

    /// `/debug/syncz`: per connected proxy, its node id, replica and collections; panics unless
    /// it answers 200 with JSON.
    pub fn syncz(&self) -> serde_json::Value {
        let r = self.get("/debug/syncz");
        r.expect_status(200);
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("/debug/syncz is not JSON ({e}):\n{r}"))
    }

    /// `sluice proxy-status --control IP:15014 [NODE]` in the hub; panics unless it exits 0.
    pub fn proxy_status(&self, node: Option<&str>) -> String {
        let mut cmd = Command::new(&tools().ip);
        cmd.args(["netns", "exec", &self.netns])
            .arg(crate::prereq::sluice_bin())
            .args(["proxy-status", "--control", &self.monitoring_addr()])
            .args(node)
            .stdin(std::process::Stdio::null());
        crate::process::scrub_env(&mut cmd);
        let out = cmd.output().expect("run sluice proxy-status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sluice proxy-status failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Waits (up to `timeout`) until each of `nodes` is connected to the running replica and has
    /// ACKed every collection it was sent (none STALE, none NOT SENT); returns `/debug/syncz`.
    /// A proxy that was sent the config of this replica and ACKed it holds that config.
    #[track_caller]
    pub fn wait_synced(&self, nodes: &[String], timeout: Duration) -> serde_json::Value {
        let name = self.name();
        crate::wait::eventually(
            &format!("{} proxies synced with {name}", nodes.len()),
            timeout,
            || {
                let syncz = self.syncz();
                let proxies = syncz.as_array().cloned().unwrap_or_default();
                for node in nodes {
                    let Some(p) = proxies.iter().find(|p| p["node_id"] == node.as_str()) else {
                        return Err(format!("{node} is not connected:\n{syncz:#}"));
                    };
                    if p["control_plane"] != name.as_str() {
                        return Err(format!("{node} is not on {name}:\n{p:#}"));
                    }
                    let types = p["types"].as_object().cloned().unwrap_or_default();
                    if types.is_empty() {
                        return Err(format!("{node} subscribed to nothing:\n{p:#}"));
                    }
                    for (t, s) in &types {
                        let sent = s["sent"].as_str().unwrap_or("");
                        if sent.is_empty() || s["acked"] != sent || !s["nacked"].is_null() {
                            return Err(format!("{node}: {t} not synced: {s}"));
                        }
                    }
                }
                Ok(syncz.clone())
            },
        )
    }

    /// What the running (or last) control plane wrote to stderr, its log.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| std::fs::read_to_string(p.stderr_path()).unwrap_or_default())
            .unwrap_or_default()
    }
}
