//! The egress world (seed 002, "Getting traffic out of the mesh"): app pods with sidecars in
//! their own Kubernetes namespaces, the egress gateway (`sluice gateway` with the egress labels)
//! in its own network namespace, and the "public" hosts the traffic is for, all on one bridge.
//!
//! ```text
//!   netns slNNN-hub-<test>                   netns slNNN-egw-<test>  10.234.N.3   sluice gateway (root, no iptables)
//!   ┌─────────────────────────────┐  veth    netns slNNN-ext-<test>  10.234.N.10  httpbin.org      :80 HTTP, :443 TLS
//!   │ br0 10.234.N.1/24           ├───────                           10.234.N.11  api.example.com  :443 TLS
//!   │ dnsmasq :53 (curl from here │                                  10.234.N.12  www.example.com  :443 TLS
//!   │  = outside any sidecar)     │                                  10.234.N.13  postman-echo.com :80 HTTP
//!   └─────────────────────────────┘                                  10.234.N.14  evil.example.org :80 HTTP
//!                                            netns slNNN-<pod>       10.234.N.40+ curl (root), sluice init, sidecar (uid 1337)
//!   istio-egressgateway.istio-system.svc.cluster.local → 10.234.N.100 (cluster IP no interface owns;
//!   a Kubernetes Service + a WorkloadEntry at 10.234.N.3)
//! ```
//!
//! Every TLS host presents a certificate of its own (CN and SAN = its name) from one per-test CA,
//! [`EgressEnv::ca`]; pods' curl trusts it, and its file is world-readable so a DestinationRule's
//! `caCertificates` can name it. Every HTTP host is the same httpbin on different addresses; each
//! TLS host is its own gunicorn, so its log tells which host a request reached.
//!
//! The config directory (one for every proxy, as one cluster) starts with the mesh ConfigMap
//! (`REGISTRY_ONLY`, access log on stdout: the seed's environment) and the egress gateway's Service
//! and WorkloadEntry. By default every proxy reads it (`--config DIR`); after
//! [`EgressEnv::start_control`], `sluice control` serves it from the hub (`10.234.N.5:15010`, a
//! [`ControlPlane`]) and the proxies started afterwards take it from there (`--xds`). No namespace has a default route; only the test's subnet and loopback are
//! ever addressed. Teardown happens on drop, also when the test panics, after every log has been
//! printed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::accesslog::AccessLogEntry;
use crate::config::{in_namespace, mesh_configmap, ConfigDir};
use crate::curl::{Curl, CurlResult};
use crate::egress_config::{egress_service_yaml, EGRESS_FQDN, EGRESS_LABELS, ISTIO_SYSTEM};
use crate::env::{chmod, dnsmasq_command, Workspace};
use crate::gateway::Gateway;
use crate::mesh::{node_id, ControlPlane, CONTROL_HOST};
use crate::metrics;
use crate::netns::Netns;
use crate::pki::{Ca, Leaf, Usage};
use crate::prereq::{sluice_bin, tools};
use crate::process::{run_checked, LogBook, Proc};
use crate::servers;
use crate::sidecar::{self, Sidecar, SidecarOpts};
use crate::slot::Slot;
use crate::wait::eventually;

pub const HTTPBIN: &str = "httpbin.org";
pub const API_HOST: &str = "api.example.com";
pub const WWW_HOST: &str = "www.example.com";
/// Tenant b's external host (plain HTTP httpbin).
pub const ECHO_HOST: &str = "postman-echo.com";
/// A host no route names (plain HTTP httpbin: reachable if anything let it through).
pub const EVIL_HOST: &str = "evil.example.org";
/// The mesh ConfigMap's file in the config directory.
pub const MESH_FILE: &str = "istio-configmap.yaml";
/// The gateway's Service and WorkloadEntry.
pub const EGRESS_SERVICE_FILE: &str = "istio-egressgateway.yaml";

/// Istio's default TEXT access log format plus ` %DOWNSTREAM_PEER_URI_SAN%` (for the mesh
/// `accessLogFormat`): lines stay readable by [`AccessLogEntry::parse`] after the last field is
/// cut off ([`PeerLogLine::parse`]).
pub const FORMAT_WITH_PEER: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME% %DOWNSTREAM_PEER_URI_SAN%\n";

const FIRST_POD: u8 = 40;
const LAST_POD: u8 = 99;

/// The addresses of one egress environment (subnet `10.234.<slot>.0/24`).
#[derive(Debug, Clone, Copy)]
pub struct EgressAddrs {
    pub subnet: u8,
    /// The hub bridge; dnsmasq listens here.
    pub dns: Ipv4Addr,
    /// The egress gateway.
    pub gateway: Ipv4Addr,
    pub httpbin: Ipv4Addr,
    pub api: Ipv4Addr,
    pub www: Ipv4Addr,
    pub echo: Ipv4Addr,
    pub evil: Ipv4Addr,
    /// Cluster IP of the istio-egressgateway Service (owned by no interface).
    pub egress_vip: Ipv4Addr,
}

impl EgressAddrs {
    fn new(subnet: u8) -> EgressAddrs {
        let ip = |h: u8| Ipv4Addr::new(10, 234, subnet, h);
        EgressAddrs {
            subnet,
            dns: ip(1),
            gateway: ip(3),
            httpbin: ip(10),
            api: ip(11),
            www: ip(12),
            echo: ip(13),
            evil: ip(14),
            egress_vip: ip(100),
        }
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 234, self.subnet, host)
    }

    pub fn cidr(&self) -> String {
        format!("10.234.{}.0/24", self.subnet)
    }
}

/// The per-test CA and the TLS hosts' certificates (PEM, world-readable).
#[derive(Debug, Clone)]
pub struct EgressCerts {
    pub ca: Ca,
    /// CN and SAN httpbin.org.
    pub httpbin: Leaf,
    /// CN and SAN api.example.com.
    pub api: Leaf,
    /// CN and SAN www.example.com.
    pub www: Leaf,
}

/// Mesh identity for a proxy: `--mesh-ca DIR` (made by `sluice ca init`) and, for rotation
/// tests, `--cert-ttl`.
#[derive(Debug, Clone)]
pub struct MeshIdentity {
    pub mesh_ca: PathBuf,
    pub cert_ttl: Option<String>,
    /// `--identity-dir DIR` (files from `sluice ca issue`; with a `--mesh-ca` without a key).
    pub identity_dir: Option<PathBuf>,
}

impl MeshIdentity {
    pub fn new(mesh_ca: &Path) -> MeshIdentity {
        MeshIdentity {
            mesh_ca: mesh_ca.to_path_buf(),
            cert_ttl: None,
            identity_dir: None,
        }
    }

    /// `--identity-dir DIR`.
    pub fn identity_dir(mut self, dir: &Path) -> MeshIdentity {
        self.identity_dir = Some(dir.to_path_buf());
        self
    }

    /// `--cert-ttl TTL` (e.g. `6s`: re-issued every ~3 s).
    pub fn cert_ttl(mut self, ttl: &str) -> MeshIdentity {
        self.cert_ttl = Some(ttl.to_string());
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--mesh-ca".to_string(),
            self.mesh_ca.to_string_lossy().into_owned(),
        ];
        if let Some(ttl) = &self.cert_ttl {
            a.push("--cert-ttl".into());
            a.push(ttl.clone());
        }
        if let Some(dir) = &self.identity_dir {
            a.push("--identity-dir".into());
            a.push(dir.to_string_lossy().into_owned());
        }
        a
    }
}

/// What to run in one app pod: curl as the app, `sluice init` and a sidecar.
#[derive(Debug, Clone)]
pub struct AppPod {
    /// Pod name (the network namespace's suffix).
    pub name: String,
    /// Kubernetes namespace (`--namespace` of the sidecar).
    pub namespace: String,
    /// `--service-account` of the sidecar (default `sleep`).
    pub service_account: String,
    pub identity: Option<MeshIdentity>,
}

impl AppPod {
    pub fn new(name: &str, namespace: &str) -> AppPod {
        AppPod {
            name: name.into(),
            namespace: namespace.into(),
            service_account: "sleep".into(),
            identity: None,
        }
    }

    pub fn service_account(mut self, sa: &str) -> AppPod {
        self.service_account = sa.into();
        self
    }

    pub fn identity(mut self, id: MeshIdentity) -> AppPod {
        self.identity = Some(id);
        self
    }

    /// The SPIFFE ID its sidecar should present.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// One running app pod.
pub struct EgressPod {
    sidecar: Option<Sidecar>,
    pub ns: Netns,
    pub spec: AppPod,
    pub ip: Ipv4Addr,
    dir: PathBuf,
    ca: PathBuf,
}

impl EgressPod {
    /// A curl run from the app (as root, so captured by the sidecar), trusting the test CA.
    pub fn curl(&self, url: &str) -> Curl {
        Curl::new(&self.ns, &self.dir, url)
            .cacert(&self.ca)
            .max_time(15.0)
    }

    /// `GET url` from the app.
    pub fn get(&self, url: &str) -> CurlResult {
        self.curl(url).run()
    }

    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar
            .as_ref()
            .unwrap_or_else(|| panic!("pod {} has no sidecar", self.spec.name))
    }

    /// Waits (5 s) for a sidecar access log line that `pred` accepts.
    #[track_caller]
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&AccessLogEntry) -> bool,
    ) -> AccessLogEntry {
        self.sidecar().wait_for_log(what, pred)
    }
}

/// One access log line in [`FORMAT_WITH_PEER`] (or the default format: no peer field).
#[derive(Debug, Clone)]
pub struct PeerLogLine {
    pub entry: AccessLogEntry,
    /// `%DOWNSTREAM_PEER_URI_SAN%` (`-` when unset); `None` for a default-format line.
    pub peer_uri_san: Option<String>,
}

impl PeerLogLine {
    pub fn parse(line: &str) -> Option<PeerLogLine> {
        let line = line.trim_end();
        if let Some(entry) = AccessLogEntry::parse(line) {
            return Some(PeerLogLine {
                entry,
                peer_uri_san: None,
            });
        }
        let (rest, last) = line.rsplit_once(' ')?;
        let entry = AccessLogEntry::parse(rest)?;
        Some(PeerLogLine {
            entry,
            peer_uri_san: Some(last.to_string()),
        })
    }
}

/// One egress test's world. Field order is teardown order: gateway, pods, servers, namespaces,
/// temporary directory, slot.
pub struct EgressEnv {
    pub name: String,
    gateway: Option<Gateway>,
    pods: Vec<EgressPod>,
    /// `sluice control` on the hub, once [`EgressEnv::start_control`] was called.
    control: Option<ControlPlane>,
    /// `--xds` of the proxies started from now on (`None`: `--config DIR`).
    xds: Option<String>,
    servers: Vec<Proc>,
    pub gw: Netns,
    pub ext: Netns,
    pub hub: Netns,
    pub addrs: EgressAddrs,
    pub config: ConfigDir,
    pub certs: EgressCerts,
    pub logs: LogBook,
    starts: usize,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    slot: Slot,
}

impl EgressEnv {
    /// Builds the hub, the gateway's and the external hosts' namespaces, DNS, the hosts and their
    /// certificates; writes the mesh ConfigMap (REGISTRY_ONLY) and the egress gateway's Service.
    /// No pods and no gateway yet.
    pub fn new(test: &str) -> EgressEnv {
        let started = Instant::now();
        tools();
        let Workspace {
            slot,
            short,
            dir,
            path: dir_path,
        } = Workspace::new(test);
        let addrs = EgressAddrs::new(slot.index());
        let hub = Netns::create(&format!("{}hub-{short}", slot.prefix()));
        hub.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
        hub.ip(&["addr", "add", &format!("{}/24", addrs.dns), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        hub.set_resolv_conf(&format!(
            "nameserver {}\noptions timeout:1 attempts:2\n",
            addrs.dns
        ));
        let gw = crate::netns::wire_to_hub(
            &hub,
            &slot,
            &format!("{}egw-{short}", slot.prefix()),
            addrs.gateway,
            &[],
        );
        gw.set_resolv_conf(&resolv_conf(addrs.dns, ISTIO_SYSTEM));
        let ext = crate::netns::wire_to_hub(
            &hub,
            &slot,
            &format!("{}ext-{short}", slot.prefix()),
            addrs.httpbin,
            &[addrs.api, addrs.www, addrs.echo, addrs.evil],
        );
        ext.set_resolv_conf(&resolv_conf(addrs.dns, "default"));

        let certs_dir = dir_path.join("certs");
        std::fs::create_dir_all(&certs_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", certs_dir.display()));
        chmod(&certs_dir, 0o755);
        let ca = Ca::new(&certs_dir, "egress");
        let leaf = |file: &str, host: &str, serial: u64| {
            ca.issue(
                &certs_dir,
                file,
                host,
                &[format!("DNS:{host}")],
                Usage::Server,
                serial,
            )
        };
        let certs = EgressCerts {
            httpbin: leaf("httpbin", HTTPBIN, 10),
            api: leaf("api", API_HOST, 11),
            www: leaf("www", WWW_HOST, 12),
            ca: ca.clone(),
        };

        let config = ConfigDir::create(&dir_path.join("config"));
        config.write(MESH_FILE, &mesh_configmap("REGISTRY_ONLY", ""));
        config.write(
            EGRESS_SERVICE_FILE,
            &egress_service_yaml(addrs.egress_vip, addrs.gateway),
        );

        let mut env = EgressEnv {
            name: test.to_string(),
            gateway: None,
            pods: Vec::new(),
            control: None,
            xds: None,
            servers: Vec::new(),
            gw,
            ext,
            hub,
            addrs,
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
            "[e2e {test}] egress world ready in {:.1}s: hub {}, gateway {} ({}), ext {} ({}), subnet {}, dir {}",
            started.elapsed().as_secs_f64(),
            env.hub.name(),
            env.gw.name(),
            env.addrs.gateway,
            env.ext.name(),
            env.addrs.httpbin,
            env.addrs.cidr(),
            env.dir_path.display()
        );
        env
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    fn start_servers(&mut self) {
        let a = self.addrs;
        let records = [
            (HTTPBIN, a.httpbin),
            (API_HOST, a.api),
            (WWW_HOST, a.www),
            (ECHO_HOST, a.echo),
            (EVIL_HOST, a.evil),
            ("external-api.example.com", a.httpbin),
            (EGRESS_FQDN, a.egress_vip),
        ];
        let dns = dnsmasq_command(&self.hub, a.dns, &self.dir_path, &records);
        self.servers.push(Proc::spawn(
            "dnsmasq",
            dns,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGTERM,
        ));
        let http_binds: Vec<String> = [a.httpbin, a.echo, a.evil]
            .iter()
            .map(|ip| format!("{ip}:80"))
            .collect();
        let tls = [
            ("httpbin-https", a.httpbin, self.certs.httpbin.clone()),
            ("api-example", a.api, self.certs.api.clone()),
            ("www-example", a.www, self.certs.www.clone()),
        ];
        let http = self.gunicorn(&http_binds, None);
        // SIGINT is gunicorn's quick shutdown.
        self.servers.push(Proc::spawn(
            "httpbin-http",
            http,
            &self.dir_path,
            &self.logs,
            None,
            libc::SIGINT,
        ));
        for (label, ip, leaf) in &tls {
            let cmd = self.gunicorn(&[format!("{ip}:443")], Some(leaf));
            self.servers.push(Proc::spawn(
                label,
                cmd,
                &self.dir_path,
                &self.logs,
                None,
                libc::SIGINT,
            ));
        }
        let ca = self.certs.ca.cert.clone();
        let (hub, dir) = (self.hub.name().to_string(), self.dir_path.clone());
        for ip in [a.httpbin, a.echo, a.evil] {
            self.wait_server(&format!("httpbin on {ip}:80"), || {
                Curl::in_netns(&hub, &dir, &format!("http://{ip}/status/204"))
            });
        }
        for (label, ip, leaf) in &tls {
            let host = leaf.cn.clone();
            self.wait_server(&format!("{label} on {ip}:443"), || {
                Curl::in_netns(&hub, &dir, &format!("https://{host}/status/204"))
                    .resolve(&host, 443, *ip)
                    .cacert(&ca)
            });
        }
        for (name, ip) in records {
            self.wait_resolves(&self.hub, name, ip);
        }
    }

    fn gunicorn(&self, binds: &[String], tls: Option<&Leaf>) -> Command {
        servers::httpbin_command(
            &self.ext,
            &self.dir_path,
            binds,
            tls.map(|l| (l.cert.as_path(), l.key.as_path())),
        )
    }

    fn wait_server(&mut self, what: &str, make: impl Fn() -> Curl) {
        servers::wait_for_204(
            what,
            Duration::from_secs(30),
            &mut self.servers,
            &self.logs,
            make,
        );
    }

    fn wait_resolves(&self, ns: &Netns, name: &str, ip: Ipv4Addr) {
        servers::wait_resolves(ns, name, ip);
    }

    /// Writes `yaml` as `file` (atomically); resources keep the namespace they name.
    pub fn apply(&self, file: &str, yaml: &str) {
        self.config.write(file, yaml);
    }

    /// Writes `yaml` as `file`, every resource without a `namespace:` put into `ns` (as
    /// `kubectl apply -n NS -f`).
    pub fn apply_in(&self, ns: &str, file: &str, yaml: &str) {
        self.config.write(file, &in_namespace(yaml, ns));
    }

    /// Deletes `file` from the config directory.
    pub fn delete(&self, file: &str) {
        self.config.remove(file);
    }

    /// Rewrites the mesh ConfigMap: REGISTRY_ONLY plus `extra` MeshConfig lines.
    pub fn set_mesh(&self, extra: &str) {
        self.config
            .write(MESH_FILE, &mesh_configmap("REGISTRY_ONLY", extra));
    }

    /// The mesh `accessLogFormat` line for [`FORMAT_WITH_PEER`] (a double-quoted YAML string).
    pub fn peer_format_mesh_line() -> String {
        let escaped = FORMAT_WITH_PEER
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("accessLogFormat: \"{escaped}\"")
    }

    /// Adds an app pod: a namespace on the bridge (resolv.conf with the pod's cluster search
    /// path), `sluice init` (outbound capture), `sluice sidecar --namespace NS --labels
    /// app=<name> --service-account SA [--mesh-ca DIR [--cert-ttl T]]` as uid 1337, ready-waited.
    pub fn add_pod(&mut self, spec: AppPod) -> &EgressPod {
        assert!(
            !self.pods.iter().any(|p| p.spec.name == spec.name),
            "a pod named {} already exists",
            spec.name
        );
        let host = FIRST_POD + self.pods.len() as u8;
        assert!(host <= LAST_POD, "too many pods");
        let ip = self.addrs.ip(host);
        let ns = crate::netns::wire_to_hub(
            &self.hub,
            &self.slot,
            &format!("{}{}", self.slot.prefix(), spec.name),
            ip,
            &[],
        );
        ns.set_resolv_conf(&resolv_conf(self.addrs.dns, &spec.namespace));
        let mut opts = SidecarOpts::captured()
            .namespace(&spec.namespace)
            .labels(&format!("app={}", spec.name))
            .arg("--service-account")
            .arg(&spec.service_account);
        if let Some(id) = &spec.identity {
            for a in id.args() {
                opts = opts.arg(&a);
            }
        }
        if let Some(servers) = &self.xds {
            opts = opts.xds(servers).arg("--xds-node-id").arg(&node_id(
                "sidecar",
                ip,
                &spec.name,
                &spec.namespace,
            ));
        }
        let sc = sidecar::launch(
            &ns,
            &self.dir_path,
            &self.logs,
            &format!("sidecar-{}", spec.name),
            self.config.path(),
            opts,
        );
        self.pods.push(EgressPod {
            sidecar: Some(sc),
            ns,
            spec,
            ip,
            dir: self.dir_path.clone(),
            ca: self.certs.ca.cert.clone(),
        });
        self.pods.last().expect("just pushed")
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &EgressPod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod named {name}"))
    }

    /// Whether `sluice gateway --help` lists `flag` (for flags that are not in every build).
    pub fn gateway_has_flag(flag: &str) -> bool {
        let out = Command::new(sluice_bin())
            .args(["gateway", "--help"])
            .stdin(Stdio::null())
            .output();
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(flag))
    }

    /// Starts `sluice gateway --config DIR --namespace istio-system --labels
    /// istio=egressgateway,app=istio-egressgateway --admin-port 15000 --status-port 15021
    /// --stats-port 15090 [--mesh-ca DIR [--cert-ttl T]]` as root in the gateway namespace and
    /// waits for `/healthz/ready` (20 s). After [`EgressEnv::start_control`], `--xds
    /// 10.234.N.5:15010 --xds-node-id router~…` instead of `--config DIR`.
    pub fn start_gateway(&mut self, identity: Option<&MeshIdentity>) -> &Gateway {
        assert!(self.gateway.is_none(), "a gateway is already running");
        let config = self.config.path().to_string_lossy().into_owned();
        let source = match &self.xds {
            Some(servers) => ["--xds", servers.as_str()],
            None => ["--config", config.as_str()],
        };
        let mut args: Vec<String> = [
            "gateway",
            source[0],
            source[1],
            "--namespace",
            ISTIO_SYSTEM,
            "--labels",
            EGRESS_LABELS,
            "--admin-port",
            "15000",
            "--status-port",
            "15021",
            "--stats-port",
            "15090",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(id) = identity {
            args.extend(id.args());
            if Self::gateway_has_flag("--service-account") {
                args.push("--service-account".into());
                args.push("istio-egressgateway-service-account".into());
            }
        }
        if self.xds.is_some() {
            args.push("--xds-node-id".into());
            args.push(self.gateway_node_id());
        }
        let gateway = Gateway::launch(&self.gw, &self.dir_path, &self.logs, &mut self.starts, args);
        self.gateway.insert(gateway)
    }

    /// Starts `sluice control` on the config directory in the hub, on its own address
    /// (`10.234.N.5`), and waits until it is ready. From then on every sidecar and the gateway
    /// start with `--xds 10.234.N.5:15010` (and `--xds-node-id`) instead of `--config DIR`:
    /// call it before starting them. `env.apply`, `env.set_mesh` and the rest reach the proxies
    /// through the control plane.
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
        self.xds = Some(cp.xds_addr());
        self.control.insert(cp)
    }

    /// The control plane; panics if [`EgressEnv::start_control`] was not called.
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
    /// (`sidecar~<pod IP>~<pod>.<namespace>~<namespace>.svc.cluster.local`).
    pub fn pod_node_id(&self, pod: &str) -> String {
        let p = self.pod(pod);
        node_id("sidecar", p.ip, &p.spec.name, &p.spec.namespace)
    }

    /// The node id the gateway presents to the control plane (`router~<gateway IP>~
    /// istio-egressgateway-1.istio-system~istio-system.svc.cluster.local`: the pod its
    /// WorkloadEntry names).
    pub fn gateway_node_id(&self) -> String {
        node_id(
            "router",
            self.addrs.gateway,
            "istio-egressgateway-1",
            ISTIO_SYSTEM,
        )
    }

    /// The running gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateway
            .as_ref()
            .expect("no gateway started: call start_gateway first")
    }

    /// Every gateway stdout line as a [`PeerLogLine`].
    pub fn gateway_peer_log(&self) -> Vec<PeerLogLine> {
        self.gateway()
            .stdout_lines()
            .iter()
            .filter_map(|l| PeerLogLine::parse(l))
            .collect()
    }

    /// Waits (5 s) for a gateway log line (default format or [`FORMAT_WITH_PEER`]) that `pred`
    /// accepts.
    #[track_caller]
    pub fn wait_for_gateway_log(
        &self,
        what: &str,
        pred: impl Fn(&PeerLogLine) -> bool,
    ) -> PeerLogLine {
        eventually(
            &format!("gateway access log line {what}"),
            Duration::from_secs(5),
            || {
                let lines = self.gateway_peer_log();
                lines.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                    format!(
                        "{} access log lines so far:\n{}",
                        lines.len(),
                        lines
                            .iter()
                            .map(|e| format!("  {}", e.entry.raw))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
            },
        )
    }

    /// The gateway's metrics.
    pub fn gateway_metrics(&self) -> Vec<metrics::Sample> {
        self.gateway().metrics()
    }

    /// A curl run from the hub: outside every sidecar, straight to whatever address it names.
    pub fn hub_curl(&self, url: &str) -> Curl {
        Curl::new(&self.hub, &self.dir_path, url)
            .cacert(&self.certs.ca.cert)
            .max_time(10.0)
    }

    /// What a server (`dnsmasq`, `httpbin-http`, `httpbin-https`, `api-example`, `www-example`)
    /// wrote so far.
    pub fn server_log(&self, label: &str) -> String {
        crate::servers::server_log(&self.servers, label)
    }

    /// Runs `sluice ARGS` on the host (not in a namespace); returns (success, stdout + stderr).
    pub fn sluice(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(sluice_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run sluice {}: {e}", args.join(" ")));
        let text = format!(
            "$ sluice {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `sluice ca init --dir <test dir>/mesh-ca`; checks `root-cert.pem` and `root-key.pem` are
    /// there and makes the directory readable for the sidecars' uid 1337 (a test shortcut: a real
    /// deployment would hand the proxies their own copy). Returns the directory.
    pub fn mesh_ca_init(&self) -> PathBuf {
        let dir = self.dir_path.join("mesh-ca");
        let (ok, text) = self.sluice(&["ca", "init", "--dir", &dir.to_string_lossy()]);
        let log = self.dir_path.join("sluice-ca-init.log");
        let _ = std::fs::write(&log, &text);
        self.logs.add("sluice ca init", &log);
        assert!(ok, "`sluice ca init` failed:\n{text}");
        for f in ["root-cert.pem", "root-key.pem"] {
            assert!(
                dir.join(f).is_file(),
                "`sluice ca init --dir {}` made no {f}:\n{text}",
                dir.display()
            );
        }
        make_readable(&dir);
        dir
    }

    /// `sluice ca issue --dir CA --namespace NS --service-account SA --out <test dir>/id-NS-SA
    /// [--ttl TTL]`; checks `cert-chain.pem` and `key.pem`; returns the output directory.
    pub fn ca_issue(&self, ca: &Path, ns: &str, sa: &str, ttl: Option<&str>) -> PathBuf {
        let out = self.dir_path.join(format!("id-{ns}-{sa}"));
        self.ca_issue_into(ca, ns, sa, ttl, &out);
        make_readable(&out);
        out
    }

    /// `sluice ca issue … --out OUT` into a given directory (existing files are replaced); the
    /// files keep the modes `sluice ca issue` gives them.
    pub fn ca_issue_into(&self, ca: &Path, ns: &str, sa: &str, ttl: Option<&str>, out: &Path) {
        let (ca_s, out_s) = (ca.to_string_lossy(), out.to_string_lossy());
        let mut args = vec![
            "ca",
            "issue",
            "--dir",
            &ca_s,
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--out",
            &out_s,
        ];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let (ok, text) = self.sluice(&args);
        assert!(ok, "`sluice ca issue` failed:\n{text}");
        for f in ["cert-chain.pem", "key.pem"] {
            assert!(
                out.join(f).is_file(),
                "`sluice ca issue` made no {f} in {}:\n{text}",
                out.display()
            );
        }
    }

    /// `sluice ca init`'s directory with only `root-cert.pem` (no key: the proxies must read
    /// `--identity-dir`), as `<test dir>/mesh-root-only`.
    pub fn root_only(&self, ca: &Path) -> PathBuf {
        let dir = self.dir_path.join("mesh-root-only");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::copy(ca.join("root-cert.pem"), dir.join("root-cert.pem"))
            .unwrap_or_else(|e| panic!("copy root-cert.pem: {e}"));
        make_readable(&dir);
        dir
    }

    /// The certificate the gateway presents on `port` for `sni` ([`presented_cert_text`], from the
    /// hub, with a client certificate when given).
    pub fn gateway_cert_text(
        &self,
        port: u16,
        sni: &str,
        client: Option<(&Path, &Path)>,
    ) -> Result<String, String> {
        presented_cert_text(
            &self.hub,
            &format!("{}:{port}", self.addrs.gateway),
            sni,
            client,
        )
    }
}

impl Drop for EgressEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut extra = String::new();
            if let Some(status) = self.gateway.as_mut().and_then(|g| g.exited()) {
                extra.push_str(&format!("!!! the gateway had exited: {status}\n"));
            }
            for pod in &mut self.pods {
                if let Some(status) = pod.sidecar.as_mut().and_then(|s| s.exited()) {
                    extra.push_str(&format!(
                        "!!! the sidecar of {} had exited: {status}\n",
                        pod.spec.name
                    ));
                }
            }
            let pods: Vec<String> = self
                .pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {} ns {} ({})",
                        p.spec.name,
                        p.ip,
                        p.spec.namespace,
                        p.ns.name()
                    )
                })
                .collect();
            eprintln!(
                "\n════════ e2e test {} failed: logs (hub {}, gateway {} {}, ext {}, subnet {}; pods: {}) ════════\n\
                 {extra}{}════════ end of logs for {} ════════",
                self.name,
                self.hub.name(),
                self.gw.name(),
                self.addrs.gateway,
                self.ext.name(),
                self.addrs.cidr(),
                pods.join(", "),
                self.logs.dump(200),
                self.name
            );
        }
        crate::env::keep_dir_if_asked(&mut self.dir);
    }
}

/// The certificate a TLS server at `addr` presents for `sni` as `openssl x509 -noout -text
/// -serial` prints it, from `openssl s_client` in `ns` (with a client certificate when given).
pub fn presented_cert_text(
    ns: &Netns,
    addr: &str,
    sni: &str,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let openssl = &tools().openssl;
    let mut cmd = ns.cmd(openssl);
    cmd.args(["s_client", "-connect", addr, "-servername", sni]);
    if let Some((cert, key)) = client {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl s_client: {e}"))?;
    let handshake = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (begin, end) = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----");
    let pem = match (handshake.find(begin), handshake.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}\n", &handshake[b..e + end.len()]),
        _ => {
            return Err(format!(
                "openssl s_client -connect {addr} -servername {sni}: no certificate:\n{handshake}"
            ))
        }
    };
    use std::io::Write;
    let mut child = Command::new(openssl)
        .args(["x509", "-noout", "-text", "-serial"])
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
    Ok(String::from_utf8_lossy(&parsed.stdout).into_owned())
}

/// The serial of a PEM certificate file (its first certificate), as `openssl x509 -serial` prints
/// it (upper-case hex).
pub fn file_serial(cert: &Path) -> String {
    let out = run_checked(
        "openssl x509 -serial",
        Command::new(&tools().openssl)
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
    );
    serial_of(&out).unwrap_or_else(|| panic!("no serial in {}: {out}", cert.display()))
}

/// The `serial=` line's value of `openssl x509 -serial` output.
pub fn serial_of(x509_text: &str) -> Option<String> {
    x509_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial="))
        .map(str::to_string)
}

fn resolv_conf(dns: Ipv4Addr, k8s_ns: &str) -> String {
    format!(
        "nameserver {dns}\nsearch {k8s_ns}.svc.cluster.local svc.cluster.local cluster.local\n\
         options timeout:1 attempts:2\n"
    )
}

/// Directory 0755, files in it 0644.
fn make_readable(dir: &Path) {
    chmod(dir, 0o755);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            chmod(&e.path(), 0o644);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lines_parse_with_and_without_the_extra_field() {
        let plain = r#"[2021-01-01T00:00:00.000Z] "GET /get HTTP/1.1" 200 - via_upstream - "-" 0 10 3 3 "-" "curl/8" "id" "httpbin.org" "10.0.0.1:80" outbound|80||httpbin.org 10.0.0.3:1 10.0.0.3:80 10.0.0.40:2 - -"#;
        let p = PeerLogLine::parse(plain).expect("plain");
        assert_eq!(p.peer_uri_san, None);
        assert_eq!(p.entry.upstream_cluster, "outbound|80||httpbin.org");
        let with = format!("{plain} spiffe://cluster.local/ns/student1/sa/api");
        let p = PeerLogLine::parse(&with).expect("with peer");
        assert_eq!(
            p.peer_uri_san.as_deref(),
            Some("spiffe://cluster.local/ns/student1/sa/api")
        );
        assert_eq!(p.entry.authority, "httpbin.org");
        assert!(PeerLogLine::parse("INFO something").is_none());
    }

    #[test]
    fn peer_format_is_a_yaml_double_quoted_line() {
        let l = EgressEnv::peer_format_mesh_line();
        assert!(
            l.starts_with("accessLogFormat: \"[%START_TIME%] \\\"%REQ(:METHOD)%"),
            "{l}"
        );
        assert!(
            l.ends_with("%ROUTE_NAME% %DOWNSTREAM_PEER_URI_SAN%\\n\""),
            "{l}"
        );
        assert!(!l.contains('\n'));
    }
}
