//! `sluice gateway`: Istio's ingress/egress gateway. Listens on every port the selected Gateway
//! servers declare (reconciled with each new snapshot), terminates or passes through TLS per
//! server, and serves HTTP with the VirtualServices bound to the gateway.
//!
//! - [`listeners`]: the set of gateway ports, opened and closed as the config changes.
//! - [`conn`]: one accepted connection: TLS (SNI, termination or passthrough), HTTP or TCP.
//! - [`edge`]: edge-request rules (`x-forwarded-*`, `httpsRedirect`, 421).

pub mod conn;
pub mod edge;
pub mod listeners;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_api::networking::Labels;
use sluice_model::{ProxyIdentity, ProxyKind, Snapshot};

use crate::admin::AdminSource;
use crate::context::{workload_labels, Proxy};
use crate::identity::IdentityOptions;
use crate::runtime::{load_identity, ConfigSource, OperatorListeners, OperatorPorts, Runtime};
use crate::store::StoreStatus;
use crate::telemetry::accesslog::AccessLogger;
use crate::telemetry::metrics::{Metrics, PeerLabels};
use crate::tls_server::ServerTlsStore;

use self::listeners::{ListenerSet, ListenerStatus};

/// Everything `sluice gateway` is told on its command line.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Where the config comes from: `--config DIR` or `--xds HOST:PORT`.
    pub config: ConfigSource,
    /// Namespace of the gateway workload (where `credentialName` Secrets are looked up).
    pub namespace: String,
    /// Labels of the gateway workload: Gateways whose `selector` is a subset of them are served.
    pub labels: Labels,
    pub admin_port: u16,
    pub status_port: u16,
    pub stats_port: u16,
    /// Client-connection limits and drain.
    pub downstream: crate::downstream::DownstreamSettings,
    /// Address the gateway ports are bound on.
    pub bind: IpAddr,
}

/// Labels of TLS failures on gateway listeners.
pub type TlsFailureLabels = Vec<(String, String)>;

/// State shared by every connection of a gateway.
pub struct Gateway {
    pub proxy: Arc<Proxy>,
    /// Server certificates by Gateway server.
    pub tls: ServerTlsStore,
    /// `sluice_gateway_tls_errors_total{port,reason}`: handshakes that failed or could not start.
    pub tls_errors: Family<TlsFailureLabels, Counter>,
    /// Configuration problems already logged (by server), so a misconfigured server does not log
    /// once per connection.
    warned: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Gateway {
    /// The gateway's shared state over `proxy`; registers its counters in `metrics`.
    pub fn new(proxy: Arc<Proxy>, metrics: &Metrics) -> Gateway {
        let tls_errors = Family::<TlsFailureLabels, Counter>::default();
        metrics.register(
            "sluice_gateway_tls_errors",
            "TLS connections a gateway closed before serving them, by port and reason (handshake, no_certificate, no_identity, no_server, not_tls)",
            tls_errors.clone(),
        );
        Gateway {
            proxy,
            tls: ServerTlsStore::default(),
            tls_errors,
            warned: Default::default(),
        }
    }

    /// Logs `message` as a warning the first time `key` has a problem.
    pub fn warn_once(&self, key: &Arc<str>, message: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(key.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// Counts one TLS connection closed on `port` for `reason`.
    pub fn count_tls_error(&self, port: u16, reason: &str) {
        self.tls_errors
            .get_or_create(&vec![
                ("port".to_string(), port.to_string()),
                ("reason".to_string(), reason.to_string()),
            ])
            .inc();
    }
}

/// `source_*` labels of a gateway workload. Without an `app` label, a gateway labelled
/// `istio: ingressgateway` (or `egressgateway`) is named `istio-ingressgateway`
/// (`istio-egressgateway`), as the canonical name of Istio's own gateway deployments.
pub fn gateway_workload_labels(namespace: &str, labels: &Labels) -> PeerLabels {
    let mut p = workload_labels(namespace, labels);
    let has_app = labels.contains_key("app") || labels.contains_key("app.kubernetes.io/name");
    let default_name = match labels.get("istio").map(String::as_str) {
        Some("ingressgateway") => Some("istio-ingressgateway"),
        Some("egressgateway") => Some("istio-egressgateway"),
        _ => None,
    };
    if let (false, Some(name)) = (has_app, default_name) {
        let name: Arc<str> = Arc::from(name);
        p.workload = name.clone();
        p.app = name.clone();
        if !labels.contains_key("service.istio.io/canonical-name") {
            p.canonical_service = name;
        }
    }
    p
}

/// The data-path state of a gateway: a [`Proxy`] that answers with `server: istio-envoy` and
/// reports metrics as the gateway workload.
pub fn gateway_proxy(
    snapshots: Arc<ArcSwap<Snapshot>>,
    access_log: AccessLogger,
    metrics: Arc<Metrics>,
    namespace: &str,
    labels: &Labels,
) -> Proxy {
    let mut proxy = Proxy::new(snapshots, access_log, metrics, namespace, labels);
    proxy.server_header = http::HeaderValue::from_static("istio-envoy");
    proxy.workload = Arc::new(gateway_workload_labels(namespace, labels));
    proxy
}

/// What the admin endpoints read.
struct GatewayAdmin {
    snapshots: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    listeners: Arc<ArcSwap<ListenerStatus>>,
    balancers: Arc<crate::balancer::Balancers>,
    /// The DNS cache, shown in `/config_dump`.
    resolver: crate::resolve::Resolver,
}

impl AdminSource for GatewayAdmin {
    fn config_dump(&self) -> serde_json::Value {
        let snap = self.snapshots.load();
        let status = self.status.load();
        let listeners = self.listeners.load();
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
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "generation": snap.generation,
            "proxy": snap.proxy,
            "mesh": snap.mesh,
            "telemetry": &*snap.telemetry,
            "gateway_ports": snap.gateway_ports(),
            "listeners": listeners.bound.iter().map(|(name, addr)| serde_json::json!({
                "name": name,
                "address": addr.to_string(),
            })).collect::<Vec<_>>(),
            "listener_errors": listeners.failed.iter().map(|(port, reason)| serde_json::json!({
                "port": port,
                "error": reason,
            })).collect::<Vec<_>>(),
            "services": snap.services,
            "clusters": snap.clusters.values().map(|c| crate::admin::cluster_config(c)).collect::<Vec<_>>(),
            "virtual_hosts": vhosts,
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
        self.listeners.load().listeners_text()
    }

    fn is_ready(&self) -> bool {
        let snap = self.snapshots.load();
        snap.generation > 0 && self.status.load().ready && self.listeners.load().is_ready()
    }

    fn not_ready_reason(&self) -> String {
        let status = self.status.load();
        if !status.ready || self.snapshots.load().generation == 0 {
            return crate::admin::config_not_ready_reason(&status);
        }
        self.listeners.load().not_ready_reason()
    }
}

/// Runs the gateway until Ctrl-C, SIGTERM or `POST /quitquitquit`, without a mesh identity.
pub async fn run(opts: GatewayOptions) -> anyhow::Result<()> {
    run_with_identity(opts, None).await
}

/// Runs the gateway with the mesh identity `identity` describes (`--mesh-ca`): ISTIO_MUTUAL
/// servers and ISTIO_MUTUAL origination towards the mesh. A certificate that cannot be loaded
/// fails startup, naming the file.
pub async fn run_with_identity(
    opts: GatewayOptions,
    identity: Option<IdentityOptions>,
) -> anyhow::Result<()> {
    let mesh_identity = load_identity(identity.as_ref())?;
    let proxy_identity = ProxyIdentity {
        namespace: opts.namespace.clone(),
        labels: opts.labels.clone(),
        service_account: identity.as_ref().map(|i| i.service_account.clone()),
        kind: ProxyKind::Gateway,
    };
    let mut rt = Runtime::load_from(
        &opts.config,
        proxy_identity,
        opts.downstream,
        mesh_identity.as_ref(),
    )
    .await?;
    let snapshots = rt.snapshots.clone();
    let mut proxy = gateway_proxy(
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
    let gateway = Arc::new(Gateway::new(proxy.clone(), &rt.metrics));
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

    let mut listeners = ListenerSet::new(opts.bind, gateway.clone());
    listeners.reconcile(&snapshots.load_full()).await;
    let admin: Arc<dyn AdminSource> = Arc::new(GatewayAdmin {
        snapshots: snapshots.clone(),
        status: rt.status.clone(),
        listeners: listeners.status(),
        balancers: proxy.balancers.clone(),
        resolver: proxy.resolver.clone(),
    });
    let ports: Vec<SocketAddr> = listeners.bound().map(|(_, a)| a).collect();

    tokio::spawn(listeners.follow(snapshots.clone(), rt.listeners_stopped()));
    rt.identity = proxy.identity.clone();
    rt.spawn_operator(operator, admin);
    tracing::info!(
        "gateway ready: ports {ports:?}, admin {admin_addr}, health {status_addr}, stats {stats_addr}"
    );
    rt.run_until_shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn istio_gateways_are_named_like_istios_deployments() {
        let p = gateway_workload_labels("istio-system", &labels(&[("istio", "ingressgateway")]));
        assert_eq!(&*p.workload, "istio-ingressgateway");
        assert_eq!(&*p.app, "istio-ingressgateway");
        assert_eq!(&*p.canonical_service, "istio-ingressgateway");
        assert_eq!(&*p.workload_namespace, "istio-system");

        let p = gateway_workload_labels("istio-system", &labels(&[("istio", "egressgateway")]));
        assert_eq!(&*p.workload, "istio-egressgateway");

        let p = gateway_workload_labels(
            "edge",
            &labels(&[("istio", "ingressgateway"), ("app", "my-gw")]),
        );
        assert_eq!(&*p.workload, "my-gw");
        assert_eq!(&*p.canonical_service, "my-gw");

        let p = gateway_workload_labels("edge", &labels(&[("istio", "custom")]));
        assert_eq!(&*p.workload, "unknown");
    }
}
