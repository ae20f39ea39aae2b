//! `sluice sidecar`: wires the config store, the outbound and inbound listeners, telemetry and the
//! admin ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use sluice_api::networking::Labels;
use sluice_model::{LogEncoding, ProxyIdentity, Snapshot};
use tokio::net::TcpListener;

use crate::admin::{serve_admin, serve_stats, serve_status, AdminSource, QuitSignal};
use crate::context::Proxy;
use crate::inbound::serve_captured_inbound;
use crate::outbound::{serve_captured, serve_forward_proxy};
use crate::store::{ConfigStore, StoreStatus};
use crate::telemetry::accesslog::{AccessLogConfig, AccessLogEncoding, AccessLogger};
use crate::telemetry::metrics::Metrics;

/// Everything `sluice sidecar` is told on its command line.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub config_dir: PathBuf,
    pub namespace: String,
    pub labels: Labels,
    pub service_account: Option<String>,
    pub outbound_port: u16,
    /// Port for captured inbound traffic (Istio's `virtualInbound`, 15006); `None` = no inbound
    /// listener.
    pub inbound_port: Option<u16>,
    pub proxy_port: u16,
    /// Address the explicit proxy listens on (loopback unless told otherwise: an open forward
    /// proxy on the pod network would let anyone egress through this workload).
    pub proxy_bind: IpAddr,
    pub admin_port: u16,
    pub status_port: u16,
    pub stats_port: u16,
}

fn access_log_config(snap: &Snapshot) -> AccessLogConfig {
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

/// What the admin endpoints read.
struct SidecarAdmin {
    snapshots: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    listeners: Vec<(String, SocketAddr)>,
    /// Runtime endpoint state (load, ejections) for `/clusters`.
    balancers: Arc<crate::balancer::Balancers>,
}

impl AdminSource for SidecarAdmin {
    fn config_dump(&self) -> serde_json::Value {
        let snap = self.snapshots.load();
        let status = self.status.load();
        let vhosts: Vec<_> = snap
            .virtual_hosts()
            .map(|v| {
                serde_json::json!({
                    "domain": v.domain.as_ref(),
                    "source": v.source.as_ref(),
                    "routes": v.rules.iter().map(|r| serde_json::json!({
                        "name": r.name.as_deref(),
                        "source": r.source.as_ref(),
                        "timeout": r.timeout.map(|t| format!("{}s", t.as_secs_f64())),
                        "retries": r.retry,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let rules = |rules: &[sluice_model::StreamRule]| {
            rules
                .iter()
                .map(|r| r.source.to_string())
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "generation": snap.generation,
            "proxy": snap.proxy,
            "mesh": snap.mesh,
            "services": snap.services,
            "clusters": snap.clusters.values().collect::<Vec<_>>(),
            "virtual_hosts": vhosts,
            "tls_routes": rules(&snap.tls_rules),
            "tcp_routes": rules(&snap.tcp_rules),
            "config": &**status,
        })
    }

    fn clusters_text(&self) -> String {
        crate::balancer::clusters_text(&self.snapshots.load(), &self.balancers)
    }

    fn clusters_json(&self) -> serde_json::Value {
        crate::balancer::clusters_json(&self.snapshots.load(), &self.balancers)
    }

    fn listeners_text(&self) -> String {
        self.listeners
            .iter()
            .map(|(name, addr)| format!("{name}::{addr}\n"))
            .collect()
    }

    fn is_ready(&self) -> bool {
        self.snapshots.load().generation > 0
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Runs the sidecar until Ctrl-C, SIGTERM or `POST /quitquitquit`.
pub async fn run(opts: SidecarOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.config_dir.is_dir(),
        "--config {}: not a directory",
        opts.config_dir.display()
    );
    let identity = ProxyIdentity {
        namespace: opts.namespace.clone(),
        labels: opts.labels.clone(),
        service_account: opts.service_account.clone(),
        kind: sluice_model::ProxyKind::Sidecar,
    };
    let mut store = ConfigStore::new(opts.config_dir.clone(), identity);
    store.rescan();
    let snapshots = store.snapshot();
    let status = store.status();

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
    let proxy = Arc::new(Proxy::new(
        snapshots.clone(),
        access_log.clone(),
        metrics.clone(),
        &opts.namespace,
        &opts.labels,
    ));

    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let outbound_addr = SocketAddr::new(any, opts.outbound_port);
    let proxy_addr = SocketAddr::new(opts.proxy_bind, opts.proxy_port);
    let admin_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.admin_port);
    let status_addr = SocketAddr::new(any, opts.status_port);
    let stats_addr = SocketAddr::new(any, opts.stats_port);
    let outbound = bind(outbound_addr, "captured outbound traffic").await?;
    let inbound = match opts.inbound_port {
        Some(port) => {
            let addr = SocketAddr::new(any, port);
            Some(bind(addr, "captured inbound traffic").await?)
        }
        None => None,
    };
    // Port 0 lets the OS choose: show the real one in /listeners.
    let inbound_addr = match &inbound {
        Some(l) => Some(l.local_addr().context("inbound listener address")?),
        None => None,
    };
    let forward = bind(proxy_addr, "explicit proxy").await?;
    let admin_l = bind(admin_addr, "admin").await?;
    let status_l = bind(status_addr, "health").await?;
    let stats_l = bind(stats_addr, "Prometheus stats").await?;

    let admin: Arc<dyn AdminSource> = Arc::new(SidecarAdmin {
        snapshots: snapshots.clone(),
        status,
        balancers: proxy.balancers.clone(),
        listeners: [
            Some(("virtualOutbound".to_string(), outbound_addr)),
            inbound_addr.map(|a| ("virtualInbound".to_string(), a)),
            Some(("explicitProxy".to_string(), proxy_addr)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    });
    let quit = QuitSignal::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // Mesh config edits change the access log live.
    {
        let snapshots = snapshots.clone();
        let access_log = access_log.clone();
        let stop = stopped();
        tokio::spawn(async move {
            let mut applied = access_log_config(&snapshots.load());
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {}
                }
                let wanted = access_log_config(&snapshots.load());
                if wanted != applied {
                    match access_log.reconfigure(wanted.clone()) {
                        Ok(()) => tracing::info!("access log reconfigured: {wanted:?}"),
                        Err(e) => tracing::error!(
                            "access log configuration refused, keeping the previous one: {e}"
                        ),
                    }
                    applied = wanted;
                }
            }
        });
    }

    tokio::spawn(store.watch(stopped()));
    tokio::spawn(serve_captured(outbound, proxy.clone(), stopped()));
    if let Some(inbound) = inbound {
        tokio::spawn(serve_captured_inbound(inbound, proxy.clone(), stopped()));
    }
    tokio::spawn(serve_forward_proxy(forward, proxy.clone(), stopped()));
    tokio::spawn(serve_admin(
        admin_l,
        admin.clone(),
        metrics.clone(),
        quit.clone(),
        stopped(),
    ));
    tokio::spawn(serve_status(status_l, admin.clone(), stopped()));
    tokio::spawn(serve_stats(stats_l, metrics.clone(), stopped()));
    let inbound_desc = inbound_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        "sidecar ready: outbound {outbound_addr}, inbound {inbound_desc}, proxy {proxy_addr}, admin {admin_addr}, health {status_addr}, stats {stats_addr}"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = sigterm.recv() => tracing::info!("SIGTERM; shutting down"),
        _ = quit.triggered() => tracing::info!("quitquitquit; shutting down"),
    }
    let _ = stop_tx.send(true);
    access_log.flush(std::time::Duration::from_secs(1));
    Ok(())
}
