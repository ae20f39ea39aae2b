//! `sluice sidecar`: wires the config store, the outbound and inbound listeners, telemetry and the
//! admin ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use sluice_api::networking::Labels;
use sluice_model::{ProxyIdentity, Snapshot};

use crate::admin::AdminSource;
use crate::context::Proxy;
use crate::identity::IdentityOptions;
use crate::inbound::serve_captured_inbound;
use crate::outbound::{serve_captured, serve_forward_proxy};
use crate::runtime::{
    bind, load_identity, ConfigSource, OperatorListeners, OperatorPorts, Runtime,
};
use crate::store::StoreStatus;

/// Everything `sluice sidecar` is told on its command line.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Where the config comes from: `--config DIR` or `--xds HOST:PORT`.
    pub config: ConfigSource,
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
    /// Client-connection limits and drain.
    pub downstream: crate::downstream::DownstreamSettings,
}

/// What the admin endpoints read.
struct SidecarAdmin {
    snapshots: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    listeners: Vec<(String, SocketAddr)>,
    /// The listeners the Sidecar resource asks for (`captureMode: NONE`), as bound now.
    bound: Arc<ArcSwap<crate::sidecar_listeners::BoundStatus>>,
    /// Runtime endpoint state (load, ejections) for `/clusters`.
    balancers: Arc<crate::balancer::Balancers>,
    /// The DNS cache, shown in `/config_dump`.
    resolver: crate::resolve::Resolver,
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
                        "matches": crate::admin::route_matches(r),
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
            "telemetry": &*snap.telemetry,
            "services": snap.services,
            "clusters": snap.clusters.values().map(|c| crate::admin::cluster_config(c)).collect::<Vec<_>>(),
            "virtual_hosts": vhosts,
            "tls_routes": rules(&snap.tls_rules),
            "tcp_routes": rules(&snap.tcp_rules),
            "sidecar_listeners": sidecar_listeners_dump(&snap),
            "config": &**status,
            "dns": self.resolver.dump(),
        })
    }

    fn clusters_text(&self) -> String {
        crate::balancer::clusters_text(&self.snapshots.load(), &self.balancers)
    }

    fn clusters_json(&self) -> serde_json::Value {
        crate::balancer::clusters_json(&self.snapshots.load(), &self.balancers)
    }

    fn listeners_text(&self) -> String {
        let bound = self.bound.load();
        let all: Vec<(String, SocketAddr)> = self
            .listeners
            .iter()
            .cloned()
            .chain(bound.bound.iter().cloned())
            .collect();
        crate::admin::listeners_text(&all)
    }

    fn is_ready(&self) -> bool {
        self.snapshots.load().generation > 0 && self.status.load().ready
    }

    fn not_ready_reason(&self) -> String {
        crate::admin::config_not_ready_reason(&self.status.load())
    }
}

/// The Sidecar resource's listeners for the config dump: the bound ones (by Envoy-style name)
/// and the ports whose egress has a scope of its own.
fn sidecar_listeners_dump(snap: &Snapshot) -> serde_json::Value {
    let listeners = &snap.sidecar_listeners;
    let ingress = listeners.bound_ingress.iter().map(|(addr, port)| {
        serde_json::json!({
            "name": format!("{}_{}", addr.ip(), addr.port()),
            "direction": "inbound",
            "address": addr.to_string(),
            "protocol": port.protocol,
            "cluster": port.cluster_name.as_ref(),
            "endpoint": port.endpoint,
        })
    });
    let egress = listeners.bound_egress.iter().map(|(addr, (protocol, scope))| {
        serde_json::json!({
            "name": format!("{}_{}", addr.ip(), addr.port()),
            "direction": "outbound",
            "address": addr.to_string(),
            "protocol": protocol,
            "hosts": scope.services.iter().filter(|s| s.port(addr.port()).is_some()).map(|s| s.hostname.as_ref()).collect::<Vec<_>>(),
        })
    });
    serde_json::Value::Array(ingress.chain(egress).collect())
}

/// Runs the sidecar until Ctrl-C, SIGTERM or `POST /quitquitquit`, without a mesh identity.
pub async fn run(opts: SidecarOptions) -> anyhow::Result<()> {
    run_with_identity(opts, None).await
}

/// Runs the sidecar with the mesh identity `identity` describes (`--mesh-ca`): ISTIO_MUTUAL
/// origination and PeerAuthentication on the inbound side. A certificate that cannot be loaded
/// fails startup, naming the file.
pub async fn run_with_identity(
    opts: SidecarOptions,
    identity: Option<IdentityOptions>,
) -> anyhow::Result<()> {
    let mesh_identity = load_identity(identity.as_ref())?;
    let identity = ProxyIdentity {
        namespace: opts.namespace.clone(),
        labels: opts.labels.clone(),
        service_account: opts.service_account.clone(),
        kind: sluice_model::ProxyKind::Sidecar,
    };
    let mut rt = Runtime::load_from(
        &opts.config,
        identity,
        opts.downstream,
        mesh_identity.as_ref(),
    )
    .await?;
    let snapshots = rt.snapshots.clone();
    let mut proxy = Proxy::new(
        snapshots.clone(),
        rt.access_log.clone(),
        rt.metrics.clone(),
        &opts.namespace,
        &opts.labels,
    );
    proxy.identity = mesh_identity;
    proxy.lifecycle = rt.lifecycle();
    proxy.balancers = rt.balancers.clone();
    let proxy = Arc::new(proxy);

    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let outbound = bind(
        SocketAddr::new(any, opts.outbound_port),
        "captured outbound traffic",
    )
    .await?;
    let outbound6 = bind_ipv6_twin(opts.outbound_port, "captured outbound traffic")?;
    let (inbound, inbound6) = match opts.inbound_port {
        Some(port) => {
            let addr = SocketAddr::new(any, port);
            let v4 = bind(addr, "captured inbound traffic").await?;
            (Some(v4), bind_ipv6_twin(port, "captured inbound traffic")?)
        }
        None => (None, None),
    };
    let forward = bind(
        SocketAddr::new(opts.proxy_bind, opts.proxy_port),
        "explicit proxy",
    )
    .await?;
    // Port 0 lets the OS choose: show the real ones in /listeners and the ready line.
    let outbound_addr = outbound.local_addr().context("outbound listener address")?;
    let inbound_addr = match &inbound {
        Some(l) => Some(l.local_addr().context("inbound listener address")?),
        None => None,
    };
    let proxy_addr = forward.local_addr().context("explicit proxy address")?;
    let operator = OperatorListeners::bind(OperatorPorts {
        admin: opts.admin_port,
        status: opts.status_port,
        stats: opts.stats_port,
    })
    .await?;
    let (admin_addr, status_addr, stats_addr) = (
        operator.admin_addr,
        operator.status_addr,
        operator.stats_addr,
    );

    let mut sidecar_listeners = crate::sidecar_listeners::SidecarListenerSet::new(proxy.clone());
    sidecar_listeners.reconcile(&snapshots.load_full()).await;
    let admin: Arc<dyn AdminSource> = Arc::new(SidecarAdmin {
        snapshots: snapshots.clone(),
        status: rt.status.clone(),
        bound: sidecar_listeners.status(),
        balancers: proxy.balancers.clone(),
        resolver: proxy.resolver.clone(),
        listeners: [
            Some(("virtualOutbound".to_string(), outbound_addr)),
            inbound_addr.map(|a| ("virtualInbound".to_string(), a)),
            Some(("explicitProxy".to_string(), proxy_addr)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    });

    let ipv6_outbound = outbound6.as_ref().and_then(|l| l.local_addr().ok());
    let ipv6_inbound = inbound6.as_ref().and_then(|l| l.local_addr().ok());
    for listener in std::iter::once(outbound).chain(outbound6) {
        tokio::spawn(serve_captured(
            listener,
            proxy.clone(),
            rt.listeners_stopped(),
        ));
    }
    for listener in inbound.into_iter().chain(inbound6) {
        tokio::spawn(serve_captured_inbound(
            listener,
            proxy.clone(),
            rt.listeners_stopped(),
        ));
    }
    tokio::spawn(sidecar_listeners.follow(snapshots.clone(), rt.listeners_stopped()));
    tokio::spawn(serve_forward_proxy(
        forward,
        proxy.clone(),
        rt.listeners_stopped(),
    ));
    rt.identity = proxy.identity.clone();
    rt.spawn_operator(operator, admin);
    let inbound_desc = inbound_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    let ipv6_desc = match (ipv6_outbound, ipv6_inbound) {
        (None, None) => String::new(),
        (outbound, inbound) => format!(
            " (IPv6: outbound {}, inbound {})",
            outbound.map_or_else(|| "off".to_string(), |a| a.to_string()),
            inbound.map_or_else(|| "off".to_string(), |a| a.to_string())
        ),
    };
    tracing::info!(
        "sidecar ready: outbound {outbound_addr}, inbound {inbound_desc}{ipv6_desc}, proxy {proxy_addr}, admin {admin_addr}, health {status_addr}, stats {stats_addr}"
    );
    rt.run_until_shutdown().await
}

/// The IPv6 twin of a capture listener: `[::]:port` with `IPV6_V6ONLY`, next to the `0.0.0.0`
/// one. `sluice init` captures IPv6 whenever the namespace has a global IPv6 address, and
/// ip6tables REDIRECT delivers those connections to an IPv6 address, which a `0.0.0.0` socket
/// never sees. Keeping the families on separate sockets (rather than one dual-stack socket) means
/// IPv4 connections keep plain IPv4 addresses (no `::ffff:a.b.c.d` in access logs, metrics or
/// `SO_ORIGINAL_DST`).
///
/// `None` when the kernel has no IPv6 (nothing can be captured there), and for port 0 (an
/// OS-chosen port that no iptables rule can point at).
fn bind_ipv6_twin(port: u16, what: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
    let context = || format!("cannot listen on {addr} ({what}, IPv6)");
    let socket = match Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) {
        Ok(socket) => socket,
        Err(e) if ipv6_unavailable(&e) => {
            tracing::info!("no IPv6 in this kernel ({e}): {what} is IPv4 only");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(context),
    };
    let listen = move || -> std::io::Result<std::net::TcpListener> {
        socket.set_only_v6(true)?;
        // As tokio's own bind does: a restarted sidecar must not wait out TIME_WAIT sockets.
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    match listen() {
        Ok(std_listener) => Ok(Some(
            tokio::net::TcpListener::from_std(std_listener).with_context(context)?,
        )),
        Err(e) if ipv6_unavailable(&e) => {
            tracing::info!("IPv6 unavailable ({e}): {what} is IPv4 only");
            Ok(None)
        }
        Err(e) => Err(e).with_context(context),
    }
}

/// Errors that mean "this host has no IPv6", not "something is wrong".
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}
