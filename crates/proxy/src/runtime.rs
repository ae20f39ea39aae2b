//! What every sluice proxy process runs besides its data listeners, shared by `sluice sidecar`
//! and `sluice gateway`: the config store and its watcher, the access log (reconfigured live
//! from the mesh config), the admin, health and Prometheus ports, and shutdown on Ctrl-C,
//! SIGTERM or `POST /quitquitquit`.
//!
//! Operator controls: `POST /drain_listeners` ends the data-plane accept loops (pass
//! [`Runtime::listeners_stopped`] to them), `POST /healthcheck/fail|ok` flips the health port,
//! and `POST /logging` reaches the process's log filter through the [`LogControl`] the binary
//! installs once with [`install_log_control`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use sluice_model::{LogEncoding, ProxyIdentity, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::admin::LogControl;
use crate::admin::{
    serve_admin_with, serve_stats, serve_status_with, AdminControls, AdminSource, DrainSignal,
    HealthOverride, QuitSignal,
};
use crate::downstream::{DownstreamSettings, Lifecycle};
use crate::identity::{Identity, IdentityOptions};
use crate::store::{ConfigStore, StoreStatus};
use crate::telemetry::accesslog::{AccessLogConfig, AccessLogEncoding, AccessLogger};
use crate::telemetry::metrics::Metrics;

/// The access log the mesh config of `snap` asks for, or the Telemetry API's built-in `envoy`
/// provider (Istio's default TEXT format on standard output) when a Telemetry resource
/// configures this proxy's access logging through it. Whether and which lines are written is
/// decided per request (`telemetry::policy`).
pub fn access_log_config(snap: &Snapshot) -> AccessLogConfig {
    use sluice_model::telemetry_policy::AccessLogDecision;
    let logging = &snap.telemetry.access_logging;
    let envoy = [&logging.client, &logging.server]
        .iter()
        .any(|p| matches!(p.decision(), AccessLogDecision::Envoy { .. }));
    if envoy {
        return AccessLogConfig {
            path: Some(PathBuf::from("/dev/stdout")),
            encoding: AccessLogEncoding::Text,
            format: None,
        };
    }
    let s = &snap.mesh.access_log;
    AccessLogConfig {
        path: s.file.as_ref().map(PathBuf::from),
        encoding: match s.encoding {
            LogEncoding::Text => AccessLogEncoding::Text,
            LogEncoding::Json => AccessLogEncoding::Json,
        },
        format: s.format.clone(),
    }
}

/// Switches `log` to `wanted` unless that is what it has.
fn apply_access_log_config(log: &AccessLogger, wanted: AccessLogConfig) {
    if log.config() == wanted {
        return;
    }
    match log.reconfigure(wanted.clone()) {
        Ok(()) => tracing::info!("access log reconfigured: {wanted:?}"),
        Err(e) => {
            tracing::error!("access log configuration refused, keeping the previous one: {e}")
        }
    }
}

static LOG_CONTROL: OnceLock<Arc<dyn LogControl>> = OnceLock::new();

/// Hands the process's log filter control to every proxy runtime started afterwards (the
/// binary calls this once, after installing its `tracing` subscriber). A second call is ignored.
pub fn install_log_control(control: Arc<dyn LogControl>) {
    let _ = LOG_CONTROL.set(control);
}

/// The installed log control, if any.
pub fn log_control() -> Option<Arc<dyn LogControl>> {
    LOG_CONTROL.get().cloned()
}

/// Binds `addr`, naming what the port is for when it fails.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Loads this proxy's mesh identity (`--mesh-ca`) and starts its rotation. `None` without
/// options: the proxy then has no identity (no ISTIO_MUTUAL, no inbound mTLS). Errors name the
/// file that could not be used.
pub fn load_identity(opts: Option<&IdentityOptions>) -> anyhow::Result<Option<Arc<Identity>>> {
    let Some(opts) = opts else {
        return Ok(None);
    };
    let identity = Identity::load(opts).with_context(|| {
        format!(
            "cannot load the mesh identity (--mesh-ca {})",
            opts.mesh_ca.display()
        )
    })?;
    identity.spawn_rotation();
    tracing::info!("mesh identity {}", identity.spiffe_id());
    Ok(Some(identity))
}

/// The operator ports: admin (loopback only), health and Prometheus.
#[derive(Debug, Clone, Copy)]
pub struct OperatorPorts {
    pub admin: u16,
    pub status: u16,
    pub stats: u16,
}

/// The operator listeners, bound (so a port conflict fails startup) but not yet serving.
pub struct OperatorListeners {
    pub admin_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    admin: TcpListener,
    status: TcpListener,
    stats: TcpListener,
}

impl OperatorListeners {
    /// Binds the admin port on 127.0.0.1 and the health and stats ports on every address.
    pub async fn bind(ports: OperatorPorts) -> anyhow::Result<OperatorListeners> {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let admin = bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports.admin),
            "admin",
        )
        .await?;
        let status = bind(SocketAddr::new(any, ports.status), "health").await?;
        let stats = bind(SocketAddr::new(any, ports.stats), "Prometheus stats").await?;
        // Port 0 lets the OS choose: report the port it chose.
        Ok(OperatorListeners {
            admin_addr: admin.local_addr()?,
            status_addr: status.local_addr()?,
            stats_addr: stats.local_addr()?,
            admin,
            status,
            stats,
        })
    }
}

/// Where a proxy's config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `--config DIR`: a folder of YAML, watched.
    Dir(PathBuf),
    /// `--xds HOST:PORT[,HOST:PORT…]`: a control plane (sluice control or istiod), any replica.
    Xds {
        servers: String,
        /// The node id to present; Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local` form from
        /// the host name when absent.
        node_id: Option<String>,
        /// Mutual TLS (`--xds-tls`, or a server on istiod's 15012): the proxy presents its mesh
        /// identity and accepts only a control plane whose certificate carries
        /// `control_plane_identity`.
        tls: bool,
        /// Default `spiffe://TD/ns/istio-system/sa/istiod`, TD being the proxy's trust domain.
        control_plane_identity: Option<String>,
        /// Delta xDS (`--xds-delta`): only changed resources travel.
        delta: bool,
    },
}

impl ConfigSource {
    /// Whether the control-plane connection is mutual TLS: asked for, or a server on 15012.
    pub fn wants_tls(&self) -> bool {
        match self {
            ConfigSource::Dir(_) => false,
            ConfigSource::Xds { servers, tls, .. } => {
                *tls || servers.split(',').any(|s| s.trim().ends_with(":15012"))
            }
        }
    }
}

/// How to reach the control plane (`--xds`).
pub struct XdsClient<'a> {
    /// `HOST:PORT[,HOST:PORT…]`.
    pub servers: &'a str,
    pub node_id: Option<&'a str>,
    /// The proxy's client config for mutual TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub delta: bool,
}

/// What the runtime keeps of the config store once the store runs on its own thread.
struct StoreHandles {
    snapshots: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    gate: Arc<crate::store::ConfigGate>,
    balancers: Arc<crate::balancer::Balancers>,
    /// The access log, once it exists: the store applies the mesh config's log settings with
    /// each snapshot, before traffic flows on it (a proxy fed by `--xds` becomes ready the
    /// moment its config arrives, and its first requests must be logged as that config says).
    access_log: Arc<OnceLock<AccessLogger>>,
}

impl StoreHandles {
    /// Takes the handles of `store` and has it reconcile the per-cluster state on its thread.
    fn take(store: &mut ConfigStore) -> StoreHandles {
        let balancers = Arc::new(crate::balancer::Balancers::default());
        store.reconcile(balancers.clone());
        let access_log: Arc<OnceLock<AccessLogger>> = Arc::default();
        let log = access_log.clone();
        store.before_publish(Box::new(move |snapshot| {
            if let Some(log) = log.get() {
                apply_access_log_config(log, access_log_config(snapshot));
            }
        }));
        StoreHandles {
            snapshots: store.snapshot(),
            status: store.status(),
            gate: store.gate(),
            balancers,
            access_log,
        }
    }
}

/// The process-wide parts of a proxy: config, telemetry, operator ports and shutdown.
pub struct Runtime {
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    pub status: Arc<ArcSwap<StoreStatus>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLogger,
    /// Per-cluster runtime state, reconciled by the config thread; give it to the [`Proxy`]
    /// (`proxy.balancers`).
    ///
    /// [`Proxy`]: crate::context::Proxy
    pub balancers: Arc<crate::balancer::Balancers>,
    pub quit: QuitSignal,
    /// Fired by `POST /drain_listeners` and by SIGTERM.
    pub drain: DrainSignal,
    /// Set by `POST /healthcheck/fail`.
    pub health: HealthOverride,
    /// The mesh identity `/certs` shows; set it before [`Runtime::spawn_operator`].
    pub identity: Option<Arc<Identity>>,
    lifecycle: Lifecycle,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
}

impl Runtime {
    /// Loads `config_dir` for `identity` on the config thread (which keeps watching it) and opens
    /// the access log its mesh config asks for (stdout in the default format when that
    /// configuration is refused).
    pub async fn load(config_dir: &Path, identity: ProxyIdentity) -> anyhow::Result<Runtime> {
        Runtime::load_with(config_dir, identity, DownstreamSettings::default()).await
    }

    /// Loads the config from `source`; see [`Runtime::load_with`] and [`Runtime::load_xds`].
    /// `mesh` is the proxy's mesh identity, which a mutual-TLS control plane needs.
    pub async fn load_from(
        source: &ConfigSource,
        identity: ProxyIdentity,
        settings: DownstreamSettings,
        mesh: Option<&Arc<Identity>>,
    ) -> anyhow::Result<Runtime> {
        let tls = source.wants_tls();
        match source {
            ConfigSource::Dir(dir) => Runtime::load_with(dir, identity, settings).await,
            ConfigSource::Xds {
                servers,
                node_id,
                control_plane_identity,
                delta,
                ..
            } => {
                let tls = if tls {
                    let mesh = mesh.with_context(|| {
                        format!(
                            "--xds {servers}: mutual TLS to the control plane (15012 or --xds-tls) \
                             needs this proxy's mesh identity: give --mesh-ca (or use the \
                             plaintext port, 15010)"
                        )
                    })?;
                    let expected = control_plane_identity.clone().unwrap_or_else(|| {
                        let trust_domain = mesh
                            .spiffe_id()
                            .trim_start_matches("spiffe://")
                            .split('/')
                            .next()
                            .unwrap_or("cluster.local")
                            .to_string();
                        format!("spiffe://{trust_domain}/ns/istio-system/sa/istiod")
                    });
                    Some(mesh.client_config(&[expected], &[b"h2"]))
                } else {
                    None
                };
                let client = XdsClient {
                    servers,
                    node_id: node_id.as_deref(),
                    tls,
                    delta: *delta,
                };
                Runtime::load_xds(client, identity, settings).await
            }
        }
    }

    /// [`Runtime::load`] with the operator's client-connection settings.
    pub async fn load_with(
        config_dir: &Path,
        identity: ProxyIdentity,
        settings: DownstreamSettings,
    ) -> anyhow::Result<Runtime> {
        // A directory, or one file (watched through its parent directory).
        anyhow::ensure!(
            config_dir.exists(),
            "--config {}: no such file or directory",
            config_dir.display()
        );
        let mut store = ConfigStore::new(config_dir.to_path_buf(), identity);
        let handles = StoreHandles::take(&mut store);
        let (stop_tx, stop_rx) = watch::channel(false);
        store
            .spawn(stop_rx.clone())
            .await
            .context("cannot start the config thread")?;
        Runtime::assemble(handles, settings, stop_tx, stop_rx)
    }

    /// A runtime whose config comes from the control plane(s) at `servers` (`--xds`,
    /// comma-separated replicas) instead of a folder. Not ready until every collection has
    /// been accepted once; after that a lost control plane changes nothing in traffic.
    pub async fn load_xds(
        xds: XdsClient<'_>,
        identity: ProxyIdentity,
        settings: DownstreamSettings,
    ) -> anyhow::Result<Runtime> {
        let servers = xds.servers;
        let node = crate::xds_source::node(&identity, xds.node_id);
        let client = crate::xds_source::client_config(servers, node, xds.tls, xds.delta);
        anyhow::ensure!(
            !client.servers.is_empty(),
            "--xds {servers:?}: give the control plane as HOST:PORT"
        );
        let mut store = ConfigStore::new_xds(servers, client.collections.iter().cloned(), identity);
        let handles = StoreHandles::take(&mut store);
        let (stop_tx, stop_rx) = watch::channel(false);
        crate::xds_source::spawn(store, client, stop_rx.clone())
            .context("cannot start the config thread")?;
        Runtime::assemble(handles, settings, stop_tx, stop_rx)
    }

    /// Everything but the config source: metrics, the access log, operator signals.
    fn assemble(
        handles: StoreHandles,
        settings: DownstreamSettings,
        stop_tx: watch::Sender<bool>,
        stop_rx: watch::Receiver<bool>,
    ) -> anyhow::Result<Runtime> {
        let StoreHandles {
            snapshots,
            status,
            gate,
            balancers,
            access_log: access_log_slot,
        } = handles;
        let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
        let access_log = AccessLogger::with_drop_counter(
            access_log_config(&snapshots.load()),
            metrics.accesslog_dropped(),
        )
        .or_else(|e| {
            tracing::error!(
                "access log configuration refused ({e}); logging to stdout in the default format"
            );
            AccessLogger::new(AccessLogConfig::default())
        })
        .context("cannot start the access log")?;
        let _ = access_log_slot.set(access_log.clone());
        // A snapshot published while the log was being opened is applied here.
        apply_access_log_config(&access_log, access_log_config(&snapshots.load()));
        let drain = DrainSignal::new();
        Ok(Runtime {
            snapshots,
            status,
            metrics,
            access_log,
            balancers,
            quit: QuitSignal::new(),
            lifecycle: Lifecycle::new(gate, drain.clone(), settings),
            drain,
            health: HealthOverride::default(),
            identity: None,
            stop_tx,
            stop_rx,
        })
    }

    /// What the data listeners consult: the config gate (closed while the configuration has
    /// not been accepted), drain, and the open-connection count. Give it to the [`Proxy`]
    /// (`proxy.lifecycle`).
    ///
    /// [`Proxy`]: crate::context::Proxy
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// A future that completes once shutdown starts. Call it once per task that must stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// A future for the data-plane accept loops: completes when shutdown starts or on
    /// `POST /drain_listeners`. Connections already accepted are not affected.
    pub fn listeners_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = self.stopped();
        let drain = self.drain.clone();
        async move {
            tokio::select! {
                () = stopped => {}
                () = drain.triggered() => {}
            }
        }
    }

    /// The controls the admin and health ports act on.
    pub fn admin_controls(&self) -> AdminControls {
        AdminControls {
            drain: self.drain.clone(),
            health: self.health.clone(),
            log: log_control(),
            identity: self.identity.clone(),
        }
    }

    /// Serves the admin, health and stats ports from `admin` until shutdown.
    pub fn spawn_operator(&self, listeners: OperatorListeners, admin: Arc<dyn AdminSource>) {
        // A gateway's route tables are per port, apart from the sidecar's virtual hosts: the
        // dump shows them for `sluice proxy-config route`.
        let admin: Arc<dyn AdminSource> = Arc::new(crate::admin::WithGatewayRoutes {
            inner: admin,
            snapshots: self.snapshots.clone(),
        });
        let controls = self.admin_controls();
        tokio::spawn(serve_admin_with(
            listeners.admin,
            admin.clone(),
            self.metrics.clone(),
            self.quit.clone(),
            controls.clone(),
            self.stopped(),
        ));
        tokio::spawn(serve_status_with(
            listeners.status,
            admin,
            controls,
            self.stopped(),
        ));
        tokio::spawn(serve_stats(
            listeners.stats,
            self.metrics.clone(),
            self.stopped(),
        ));
    }

    /// Waits for Ctrl-C, SIGTERM or `POST /quitquitquit`, then tells every task to stop and
    /// flushes the access log. SIGTERM drains first: readiness answers 503, the listeners stop
    /// accepting, HTTP/1.1 responses carry `connection: close` and HTTP/2 connections get a
    /// GOAWAY, and the process waits until every connection is done or
    /// the drain duration (`--termination-drain-duration`) has passed.
    pub async fn run_until_shutdown(self) -> anyhow::Result<()> {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = sigterm.recv() => {
                tracing::info!(
                    "SIGTERM; draining {} connections for up to {:?}",
                    self.lifecycle.active_connections(),
                    self.lifecycle.settings.drain_duration
                );
                self.drain.trigger();
                let open = tokio::select! {
                    open = self.lifecycle.drained(self.lifecycle.settings.drain_duration) => open,
                    _ = sigterm.recv() => {
                        tracing::info!("second SIGTERM; not waiting for the drain");
                        self.lifecycle.active_connections()
                    }
                };
                tracing::info!("drained ({open} connections still open); shutting down");
            }
            _ = self.quit.triggered() => tracing::info!("quitquitquit; shutting down"),
        }
        self.shutdown();
        Ok(())
    }

    /// Tells every task to stop and flushes the access log.
    pub fn shutdown(&self) {
        let _ = self.stop_tx.send(true);
        self.access_log.flush(Duration::from_secs(1));
    }
}
