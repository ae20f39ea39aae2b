//! The independent xDS peer: `apps/xds_peer.py`, an ADS client and server written with Python's
//! grpcio, speaking MCP-over-XDS as current istiod does. It proves `sluice control` and
//! `sluice sidecar --xds` against a peer whose wire code nobody here wrote.
//!
//! Where its protos come from: Envoy's ADS (`DiscoveryRequest`/`DiscoveryResponse`, `Node`,
//! `google.rpc.Status`) is the PyPI package `xds-protos`, Python code the gRPC team generates from
//! envoyproxy/data-plane-api; Istio's messages are compiled at start with `grpc_tools.protoc`
//! from sluice's own schema in `crates/xds/proto` (checked descriptor by descriptor against
//! istio/api, see its README). So the peer is independent for ADS, the MCP envelope and the proto3
//! JSON mapping (Google's `json_format`), not for Istio's field numbers, which
//! `crates/xds/tests/known_bytes.rs` covers.
//!
//! Collections are those of `sluice_xds::COLLECTIONS`: `networking.istio.io/v1/<Kind>` and
//! `security.istio.io/v1/<Kind>` (`v1alpha3`/`v1beta1` accepted as aliases and answered with the
//! same resources, under the type URL asked for), each resource an `istio.mcp.v1alpha1.Resource`
//! around the Istio message; and `core/v1alpha1/MeshConfig` (alias
//! `mesh.istio.io/v1alpha1/MeshConfig`), whose resource is the bare
//! `istio.mesh.v1alpha1.MeshConfig`, with no envelope and no name.
//!
//! - [`XdsPeerServer`] serves a JSON file of Istio resources (`{"version": "1", "<collection>":
//!   [{"name": "ns/name", "labels": {…}, "spec": {…proto3 JSON…}}]}`; a MeshConfig entry is
//!   only `{"spec": {…}}`) over ADS and reports every request it receives (ACKs, NACKs with their
//!   message) as a JSON line. On an entry, `"body_type": "<message>"` and `"mcp": true|false`
//!   serve a body or an envelope the collection does not have, for a reader to refuse.
//! - [`xds_peer_client`] opens one ADS stream, subscribes to collections, decodes every response
//!   (MCP `Resource` → the Istio message; a bare MeshConfig), ACKs or NACKs it, and returns what
//!   it printed.
//!
//! The peer runs with the test venv's Python (`$SLUICE_TEST_VENV`), which must have grpcio,
//! grpcio-tools, protobuf and xds-protos (`scripts/requirements-test.txt`); without them every
//! call fails with a message that names `scripts/install-test-deps.sh`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Netns;
use crate::prereq::{repo_root, venv_dir};
use crate::process::{scrub_env, LogBook, Proc};

/// How long the peer may take to come up: the first start compiles the Istio protos (a few
/// seconds on a busy two-core machine); later starts reuse the cached descriptor set.
const STARTUP: Duration = Duration::from_secs(60);

const INSTALL: &str = "scripts/install-test-deps.sh";

/// What went wrong with the peer: a missing prerequisite, a peer that exited or timed out, or an
/// expectation not met, with the peer's output. `Debug` prints the message as is, so
/// `.unwrap()` and a test returning `Result` show it readably.
pub struct PeerError(String);

impl PeerError {
    fn new(msg: impl Into<String>) -> PeerError {
        PeerError(msg.into())
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

impl From<String> for PeerError {
    fn from(msg: String) -> PeerError {
        PeerError(msg)
    }
}

impl From<&str> for PeerError {
    fn from(msg: &str) -> PeerError {
        PeerError(msg.to_string())
    }
}

/// `crates/e2e/apps/xds_peer.py`.
pub fn peer_script() -> PathBuf {
    repo_root().join("crates/e2e/apps/xds_peer.py")
}

/// The venv's Python, once it is known to import grpc, grpc_tools, protobuf and Envoy's ADS
/// (xds-protos).
pub fn peer_python() -> Result<PathBuf, PeerError> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(check_python).clone().map_err(PeerError)
}

fn check_python() -> Result<PathBuf, String> {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    if !python.is_file() {
        return Err(format!(
            "the xDS peer needs the Python venv at {} (set SLUICE_TEST_VENV to use another): \
             create it with {INSTALL} (pip install -r scripts/requirements-test.txt)",
            venv.display()
        ));
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_tools.protoc, google.protobuf.json_format, \
             envoy.service.discovery.v3.ads_pb2_grpc",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the venv at {} cannot import grpc, grpc_tools, google.protobuf and \
             envoy.service.discovery.v3 (xds-protos), which the xDS peer \
             (crates/e2e/apps/xds_peer.py) needs: run {INSTALL} (or `{}/bin/pip install -r \
             scripts/requirements-test.txt`)\n{}",
            venv.display(),
            venv.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(python)
}

/// `python xds_peer.py`, in the network namespace named `netns` when given, without proxy
/// variables (grpc honours `http_proxy`).
fn peer_command(netns: Option<&str>) -> Result<Command, PeerError> {
    let python = peer_python()?;
    let mut cmd = match netns {
        Some(name) => {
            let mut c = Command::new(&crate::prereq::tools().ip);
            c.args(["netns", "exec", name]).arg(python);
            c
        }
        None => Command::new(&python),
    };
    scrub_env(&mut cmd);
    cmd.arg(peer_script())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Ok(cmd)
}

/// The JSON lines of a peer's stdout (a line that is not JSON is kept as a string).
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone())))
        .collect()
}

fn is_event(v: &Value, event: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(event)
}

/// A label (and log file name) not yet used in `dir`.
fn free_label(dir: &Path, base: &str) -> String {
    (1..)
        .map(|n| {
            if n == 1 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|l| !dir.join(format!("{l}.stdout.log")).exists())
        .unwrap_or_else(|| base.to_string())
}

fn write_json(path: &Path, config: &Value) -> Result<(), PeerError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| PeerError::new(format!("serialize {}: {e}", path.display())))?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| PeerError::new(format!("write {}: {e}", path.display())))
}

/// `xds_peer.py server`: an ADS server for every stream, serving the config file. Stopped
/// (SIGTERM, then SIGKILL) on drop.
pub struct XdsPeerServer {
    proc: Mutex<Proc>,
    config_path: PathBuf,
    addr: SocketAddr,
    logs: LogBook,
}

impl XdsPeerServer {
    /// Starts the server on 127.0.0.1:`port` (0 picks a free one, see [`XdsPeerServer::addr`])
    /// serving `config`, written to `<dir>/xds-peer-config.json`; returns once it listens.
    pub fn start(dir: &Path, port: u16, config: &Value) -> Result<XdsPeerServer, PeerError> {
        Self::launch(None, IpAddr::V4(Ipv4Addr::LOCALHOST), dir, port, config)
    }

    /// Like [`XdsPeerServer::start`], inside network namespace `ns`, listening on `address`
    /// (for proxies in other namespaces of the test).
    pub fn start_in(
        ns: &Netns,
        address: IpAddr,
        dir: &Path,
        port: u16,
        config: &Value,
    ) -> Result<XdsPeerServer, PeerError> {
        Self::launch(Some(ns.name()), address, dir, port, config)
    }

    fn launch(
        netns: Option<&str>,
        address: IpAddr,
        dir: &Path,
        port: u16,
        config: &Value,
    ) -> Result<XdsPeerServer, PeerError> {
        let label = free_label(dir, "xds-peer-server");
        let config_path = dir.join(format!("{label}.config.json"));
        write_json(&config_path, config)?;
        let mut cmd = peer_command(netns)?;
        cmd.args(["server", "--address", &address.to_string(), "--port"])
            .arg(port.to_string())
            .arg("--config")
            .arg(&config_path);
        let logs = LogBook::default();
        let mut proc = Proc::spawn(&label, cmd, dir, &logs, None, libc::SIGTERM);
        let deadline = Instant::now() + STARTUP;
        let port = loop {
            let events = json_lines(&proc.stdout_lines());
            if let Some(p) = events
                .iter()
                .find(|v| is_event(v, "listening"))
                .and_then(|v| v.get("port")?.as_u64())
            {
                break u16::try_from(p)
                    .map_err(|_| PeerError::new(format!("xDS peer server: bad port {p}")))?;
            }
            if let Some(status) = proc.exited() {
                return Err(PeerError::new(format!(
                    "the xDS peer server exited ({status}) before listening\n{}",
                    logs.dump(40)
                )));
            }
            if Instant::now() > deadline {
                proc.stop();
                return Err(PeerError::new(format!(
                    "the xDS peer server did not listen within {STARTUP:?}\n{}",
                    logs.dump(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(XdsPeerServer {
            proc: Mutex::new(proc),
            config_path,
            addr: SocketAddr::new(address, port),
            logs,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The file it serves.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn proc(&self) -> std::sync::MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line it printed so far, parsed: `{"event": "config" | "listening" | "request" |
    /// "response" | "stream_closed" | "config_error", …}`.
    pub fn events(&self) -> Vec<Value> {
        json_lines(&self.proc().stdout_lines())
    }

    /// The requests it received so far: `{"event": "request", "stream", "node_id", "has_node",
    /// "type_url", "collection", "version_info", "response_nonce", "resource_names",
    /// "unknown_fields", "error_detail": message or null}` (`node_id` is the stream's, from its
    /// first request; `collection` the main type URL of `type_url`, which may be an alias;
    /// `unknown_fields` lists fields Envoy's DiscoveryRequest does not define).
    pub fn requests(&self) -> Vec<Value> {
        self.events_named("request")
    }

    /// The responses it sent so far: `{"event": "response", "stream", "type_url", "collection",
    /// "version_info", "nonce", "resources": count}`.
    pub fn responses(&self) -> Vec<Value> {
        self.events_named("response")
    }

    fn events_named(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| is_event(v, event))
            .collect()
    }

    /// Rewrites the config file (atomically) and sends SIGHUP; returns once the server has loaded
    /// it, and so has pushed it to every stream. A config it refuses is an error.
    pub fn update(&self, config: &Value) -> Result<(), PeerError> {
        let before = self.events().len();
        write_json(&self.config_path, config)?;
        {
            let mut proc = self.proc();
            if proc.exited().is_none() {
                // SAFETY: plain syscall on our own child's pid (not reaped while it runs).
                unsafe { libc::kill(proc.pid() as libc::pid_t, libc::SIGHUP) };
            }
        }
        self.wait_for_event(
            "the xDS peer server to load the new config",
            Duration::from_secs(10),
            |i, v| {
                if i < before {
                    return Ok(false);
                }
                if is_event(v, "config_error") {
                    return Err(format!("it refused the config: {}", v["message"]));
                }
                Ok(is_event(v, "config"))
            },
        )
        .map(drop)
    }

    /// Waits until a request satisfying `pred` has been received (or was already), and returns
    /// it; an error with every request seen after `timeout`, or when the server exits.
    pub fn wait_for(
        &self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, PeerError> {
        self.wait_for_event("a matching request", timeout, |_, v| {
            Ok(is_event(v, "request") && pred(v))
        })
    }

    /// Polls the event lines until `pred(index, event)` is `Ok(true)` for one (an `Err` ends the
    /// wait with that message).
    fn wait_for_event(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(usize, &Value) -> Result<bool, String>,
    ) -> Result<Value, PeerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            for (i, v) in events.iter().enumerate() {
                match pred(i, v) {
                    Ok(true) => return Ok(v.clone()),
                    Ok(false) => {}
                    Err(msg) => {
                        return Err(PeerError::new(format!(
                            "waiting for {what}: {msg}\n{}",
                            self.logs.dump(80)
                        )))
                    }
                }
            }
            let exited = self.proc().exited();
            if let Some(status) = exited {
                return Err(PeerError::new(format!(
                    "the xDS peer server exited ({status}) while waiting for {what}\n{}",
                    self.logs.dump(80)
                )));
            }
            if Instant::now() > deadline {
                return Err(PeerError::new(format!(
                    "{what}: none within {timeout:?}\n{}",
                    self.logs.dump(80)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its stdout and stderr, for a failure message.
    pub fn log_dump(&self) -> String {
        self.logs.dump(200)
    }

    /// Stops it now (SIGTERM, then SIGKILL after 3 s); also done on drop.
    pub fn stop(&self) {
        self.proc().stop();
    }
}

/// How [`xds_peer_client`] behaves; `Default` ACKs everything and ends after one response or
/// 10 s.
#[derive(Debug, Clone)]
pub struct XdsClientOptions {
    /// `node.id` of the first request (default: an Istio sidecar id,
    /// `sidecar~127.0.0.1~xds-peer.default~default.svc.cluster.local`).
    pub node_id: Option<String>,
    /// `node.metadata` (a `google.protobuf.Struct`), e.g. `{"NAMESPACE": "default"}`.
    pub node_metadata: Option<Value>,
    /// NACK every response of this type instead of ACKing it, with `nack_message`.
    pub nack_type: Option<String>,
    pub nack_message: Option<String>,
    /// Exit after this many responses (all types together).
    pub responses: usize,
    /// For all of them; the client fails after it.
    pub timeout: Duration,
    /// Print every field of a spec, also those at their default (an enum's first value, `""`,
    /// `0`), which proto3 JSON otherwise leaves out.
    pub with_defaults: bool,
    /// Run in this network namespace (by name) instead of the test's own.
    pub netns: Option<String>,
}

impl Default for XdsClientOptions {
    fn default() -> Self {
        XdsClientOptions {
            node_id: None,
            node_metadata: None,
            nack_type: None,
            nack_message: None,
            responses: 1,
            timeout: Duration::from_secs(10),
            with_defaults: false,
            netns: None,
        }
    }
}

impl XdsClientOptions {
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = Some(id.to_string());
        self
    }

    pub fn node_metadata(mut self, metadata: Value) -> Self {
        self.node_metadata = Some(metadata);
        self
    }

    pub fn nack(mut self, type_url: &str, message: &str) -> Self {
        self.nack_type = Some(type_url.to_string());
        self.nack_message = Some(message.to_string());
        self
    }

    pub fn responses(mut self, n: usize) -> Self {
        self.responses = n;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_defaults(mut self) -> Self {
        self.with_defaults = true;
        self
    }

    pub fn in_netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name().to_string());
        self
    }
}

/// Runs `xds_peer.py client` against `server` (`HOST:PORT`) subscribed to `types` until it has
/// seen `options.responses` responses, and returns every line it printed, in order: per response
/// `{"type_url", "version_info", "nonce", "resources": [{"mcp", "name", "labels", "annotations",
/// "version", "body_type_url", "spec"}]}` (`"mcp": false` for MeshConfig's bare message, whose
/// name, labels, annotations and version are empty), then the request it answered with,
/// `{"sent": "ack" | "nack", "type_url", "version_info", "response_nonce", "error_detail":
/// {"code", "message"} | null}`. A timeout, a failed stream or a resource that is not what istiod
/// would send (wrong envelope or body type, undecodable bytes, unknown fields) is an error with
/// its output.
pub fn xds_peer_client(
    server: impl fmt::Display,
    types: &[&str],
    options: &XdsClientOptions,
) -> Result<Vec<Value>, PeerError> {
    if types.is_empty() {
        return Err(PeerError::new("xds_peer_client: no type to subscribe to"));
    }
    let mut cmd = peer_command(options.netns.as_deref())?;
    cmd.args(["client", "--server", &server.to_string()]);
    for t in types {
        cmd.args(["--type", t]);
    }
    if let Some(id) = &options.node_id {
        cmd.args(["--node-id", id]);
    }
    if let Some(md) = &options.node_metadata {
        cmd.args(["--node-metadata", &md.to_string()]);
    }
    if let Some(t) = &options.nack_type {
        cmd.args(["--nack-type", t]);
    }
    if let Some(m) = &options.nack_message {
        cmd.args(["--nack-message", m]);
    }
    if options.with_defaults {
        cmd.arg("--with-defaults");
    }
    cmd.args(["--responses", &options.responses.to_string()])
        .args(["--timeout", &options.timeout.as_secs_f64().to_string()]);

    let dir = tempfile::Builder::new()
        .prefix("sluice-xds-peer-client-")
        .tempdir()
        .map_err(|e| PeerError::new(format!("temporary directory: {e}")))?;
    let logs = LogBook::default();
    let mut proc = Proc::spawn(
        "xds-peer-client",
        cmd,
        dir.path(),
        &logs,
        None,
        libc::SIGTERM,
    );
    // The client enforces `timeout` itself; this only bounds a client that hangs anyway.
    let deadline = Instant::now() + STARTUP + options.timeout;
    let status = loop {
        if let Some(status) = proc.exited() {
            break status;
        }
        if Instant::now() > deadline {
            proc.stop();
            return Err(PeerError::new(format!(
                "the xDS peer client did not finish within {:?}\n{}",
                STARTUP + options.timeout,
                logs.dump(80)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = json_lines(&proc.stdout_lines());
    if !status.success() {
        return Err(PeerError::new(format!(
            "the xDS peer client against {server} ({}) failed ({status})\n{}",
            types.join(", "),
            logs.dump(80)
        )));
    }
    Ok(lines)
}
