//! `sluice control`: one control plane for many proxies. It reads a config folder with the same
//! store, validation and last-good rules as a proxy, and serves it over gRPC as istiod does:
//! Envoy's Aggregated Discovery Service carrying Istio config as MCP resources
//! (`sluice_xds`), on 15010 (plaintext) and, with a mesh identity, 15012 (mutual TLS: the
//! proxy's namespace comes from its certificate, and only there are Secrets served). Its
//! monitoring port (15014, as istiod's) serves
//! istiod's metrics on `/metrics`, `/ready`, and `/debug/syncz` (what each connected proxy has
//! been sent and has ACKed, which `sluice proxy-status` reads).
//!
//! The store reads and validates on its own thread, and encoding happens there once per change;
//! the ADS streams only select (scoping) and clone encoded bytes.

pub mod ca_server;
pub mod encode;
pub mod metrics;
pub mod mtls;
pub mod push;
mod sidecars;
pub mod webhook_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use http::StatusCode;
use sluice_model::ProxyIdentity;
use sluice_proxy::admin::{respond, respond_json, serve_http, Handler, JSON, TEXT};
use sluice_proxy::store::ConfigStore;
use sluice_xds::server::{AdsServer, Published};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::ControlMetrics;
use crate::push::{debounce, Debounce, Encoder};

/// Largest message the control plane accepts from a proxy (requests are small; a NACK's
/// message is bounded by the proxy).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// What `sluice control` is told on its command line.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// A folder of config to serve (`--config`); with `kube`, served together.
    pub config_dir: Option<PathBuf>,
    /// Also read the config from the Kubernetes API (`--kube`).
    pub kube: bool,
    /// Istio's namespace: where the mesh config (`istio` ConfigMap) is read from the API.
    pub istio_namespace: String,
    /// Where Secrets named by `credentialName` are read from the API (the gateways'
    /// namespaces).
    pub credential_namespaces: Vec<String>,
    /// The plaintext xDS port (istiod: 15010).
    pub xds_addr: SocketAddr,
    /// `/metrics`, `/ready`, `/debug/syncz` (istiod: 15014).
    pub monitoring_addr: SocketAddr,
    /// This replica's name, sent to proxies as `control_plane.identifier`.
    pub identifier: String,
    pub debounce: Debounce,
    /// The mutual-TLS xDS port (istiod: 15012) and the control plane's own identity.
    pub tls: Option<ControlTls>,
    /// The admission webhooks (istiod: 15017): sidecar injection and validation over HTTPS.
    pub webhook: Option<webhook_server::WebhookOptions>,
}

/// The mutual-TLS port: where, and as whom (a workload identity from the mesh root, istiod's
/// `spiffe://TD/ns/istio-system/sa/istiod` by default).
#[derive(Debug, Clone)]
pub struct ControlTls {
    pub addr: SocketAddr,
    pub identity: sluice_proxy::identity::IdentityOptions,
}

/// Whether the control plane signs workload certificates, as istiod's CA: it holds the mesh
/// root's key (`--mesh-ca` with `root-key.pem`) and the API server can vouch for
/// service-account tokens (`--kube`). It then serves the certificate service on its mutual-TLS
/// port and publishes the root in every namespace, and its injection webhook points sidecars at
/// it.
pub fn serves_certificates(kube: bool, mesh_ca: Option<&std::path::Path>) -> bool {
    kube && mesh_ca.is_some_and(|dir| dir.join(sluice_proxy::identity::ROOT_KEY_FILE).exists())
}

/// Connects to the Kubernetes API (kubeconfig from `KUBECONFIG` or `~/.kube/config`, else the
/// pod's service account) and starts watching it; the store waits for every kind's first list.
async fn start_kube_source(
    store: &mut ConfigStore,
    opts: &ControlOptions,
) -> anyhow::Result<(
    std::sync::mpsc::Receiver<sluice_proxy::store::SourceUpdate>,
    sluice_kube::kube::Client,
)> {
    let client = sluice_kube::kube::Client::try_default()
        .await
        .context("--kube: no Kubernetes API to talk to (KUBECONFIG, ~/.kube/config or the pod's service account)")?;
    store.add_source(sluice_kube::source::prefixes());
    let (tx, rx) = std::sync::mpsc::channel();
    let options = sluice_kube::source::KubeOptions {
        istio_namespace: opts.istio_namespace.clone(),
        credential_namespaces: opts.credential_namespaces.clone(),
    };
    tokio::spawn(sluice_kube::source::run(client.clone(), options, tx));
    Ok((rx, client))
}

/// Runs the control plane until Ctrl-C or SIGTERM.
pub async fn run(opts: ControlOptions) -> anyhow::Result<()> {
    if let Some(dir) = &opts.config_dir {
        // A directory, or one file (watched through its parent directory).
        anyhow::ensure!(
            dir.exists(),
            "--config {}: no such file or directory",
            dir.display()
        );
    }
    anyhow::ensure!(
        opts.config_dir.is_some() || opts.kube,
        "nothing to serve: give --config DIR, --kube, or both"
    );
    let metrics = Arc::new(ControlMetrics::new());
    let xds_listener = TcpListener::bind(opts.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} (xDS)", opts.xds_addr))?;
    let monitoring_listener = TcpListener::bind(opts.monitoring_addr)
        .await
        .with_context(|| format!("cannot listen on {} (monitoring)", opts.monitoring_addr))?;

    let (candidates_tx, mut candidates_rx) = watch::channel::<Option<Arc<Published>>>(None);
    let mut store = match &opts.config_dir {
        Some(dir) => ConfigStore::new(dir.clone(), ProxyIdentity::default()),
        None => ConfigStore::without_folder("kube://", ProxyIdentity::default()),
    };
    let (kube_updates, kube_client) = match opts.kube {
        false => (None, None),
        true => {
            let (updates, client) = start_kube_source(&mut store, &opts).await?;
            (Some(updates), Some(client))
        }
    };
    // With the API as a source, each published config is analyzed and the messages written to
    // the objects' status.
    // The certificate service (on the mutual-TLS port, below) and the root it signs with.
    let (certificate_service, published_root) = match (&opts.tls, &kube_client) {
        (Some(tls), Some(client))
            if serves_certificates(opts.kube, Some(&tls.identity.mesh_ca)) =>
        {
            let ca = sluice_proxy::identity::MeshCa::load(&tls.identity.mesh_ca)?;
            let root = ca.root_pem().to_string();
            let reviewer = Arc::new(ca_server::KubeTokenReviewer(client.clone()));
            let ca = ca_server::WorkloadCa::new(ca, &tls.identity.trust_domain, reviewer);
            tracing::info!(
                "certificate service on {} (Kubernetes service-account tokens)",
                tls.addr
            );
            (
                Some(sluice_xds::ca::CaService::new(Arc::new(ca))),
                Some(root),
            )
        }
        _ => (None, None),
    };
    // With several replicas, the one holding the lease writes status and publishes the root.
    let analysis = match kube_client {
        None => None,
        Some(client) => {
            let (tx, rx) = watch::channel(Arc::new(Vec::new()));
            let (leading_tx, leading_rx) = watch::channel(false);
            if let Some(root) = published_root {
                tokio::spawn(sluice_kube::root_cert::run(
                    client.clone(),
                    root,
                    leading_tx.subscribe(),
                ));
            }
            let lease = sluice_kube::leader::LeaseOptions::new(
                &opts.istio_namespace,
                sluice_kube::leader::STATUS_LEASE,
                &sluice_kube::leader::default_identity(),
            );
            tokio::spawn(sluice_kube::leader::run(client.clone(), lease, leading_tx));
            tokio::spawn(sluice_kube::status::run(client, rx, leading_rx));
            Some(tx)
        }
    };
    let mut encoder = Encoder::default();
    store.publish_to(Box::new(move |generation, resources| {
        if let Some(analysis) = &analysis {
            analysis.send_replace(Arc::new(resources.to_vec()));
        }
        let published = encoder.encode(generation, resources);
        candidates_tx.send_replace(Some(Arc::new(published)));
    }));
    let status = store.status();
    let (stop_tx, stop_rx) = watch::channel(false);
    store
        .spawn_with_sources(stop_rx, kube_updates)
        .await
        .context("cannot start the config thread")?;
    // The first load is served at once; later changes are debounced.
    let first = candidates_rx
        .borrow_and_update()
        .clone()
        .unwrap_or_default();
    let (served_tx, served_rx) = watch::channel(first);
    tokio::spawn(debounce(candidates_rx, served_tx, opts.debounce));

    let ads = AdsServer::new(served_rx, metrics.clone(), &opts.identifier);
    let service = ads.service(MAX_REQUEST_BYTES);
    let incoming = sluice_xds::tonic::transport::server::TcpIncoming::from(xds_listener);
    let shutdown = shutdown_signal();
    let (quit_tx, quit_rx) = watch::channel(false);
    let grpc_tls = match &opts.tls {
        None => None,
        Some(tls) => {
            let identity = sluice_proxy::runtime::load_identity(Some(&tls.identity))?
                .context("no mesh identity")?;
            let listener = TcpListener::bind(tls.addr)
                .await
                .with_context(|| format!("cannot listen on {} (xDS, mutual TLS)", tls.addr))?;
            // The certificate service's callers have no certificate yet: the port then takes
            // clients without one too, which are served xDS as on the plaintext port (never
            // Secrets).
            let config = identity.server_config(&[b"h2"], certificate_service.is_some());
            let incoming = mtls::incoming(listener, config);
            let router = sluice_xds::tonic::transport::Server::builder()
                .add_service(service.clone())
                .add_optional_service(certificate_service);
            Some(tokio::spawn(
                router.serve_with_incoming_shutdown(incoming, quitting(&quit_rx)),
            ))
        }
    };
    let grpc = tokio::spawn(
        sluice_xds::tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, quitting(&quit_rx)),
    );
    let handler = monitoring_handler(metrics, ads, status);
    let monitoring = tokio::spawn(serve_http(monitoring_listener, handler, quitting(&quit_rx)));
    let webhooks = match opts.webhook.clone() {
        Some(w) => Some(webhook_server::spawn(w, quitting(&quit_rx)).await?),
        None => None,
    };
    tracing::info!(
        xds = %opts.xds_addr,
        xds_mtls = ?opts.tls.as_ref().map(|t| t.addr),
        monitoring = %opts.monitoring_addr,
        config = ?opts.config_dir,
        kube = opts.kube,
        "control plane serving"
    );
    shutdown.await;
    tracing::info!("shutting down");
    let _ = quit_tx.send(true);
    let _ = stop_tx.send(true);
    let _ = grpc.await;
    if let Some(grpc_tls) = grpc_tls {
        let _ = grpc_tls.await;
    }
    let _ = monitoring.await;
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    Ok(())
}

fn monitoring_handler(
    metrics: Arc<ControlMetrics>,
    ads: AdsServer,
    status: Arc<arc_swap::ArcSwap<sluice_proxy::store::StoreStatus>>,
) -> Handler {
    Arc::new(move |parts| match parts.uri.path() {
        "/metrics" | "/stats/prometheus" => respond(
            StatusCode::OK,
            sluice_proxy::telemetry::metrics::PROMETHEUS_CONTENT_TYPE,
            metrics.encode(),
        ),
        "/ready" => {
            let s = status.load();
            if s.ready {
                respond(StatusCode::OK, TEXT, "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {}\n", s.not_ready.join("; ")),
                )
            }
        }
        "/debug/syncz" => match serde_json::to_value(ads.connections()) {
            Ok(v) => respond_json(&v),
            Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
        },
        "/debug/configz" => match serde_json::to_value(status.load().as_ref()) {
            Ok(v) => respond_json(&v),
            Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, JSON, e.to_string()),
        },
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    })
}

/// Completes once `quit` turns true.
fn quitting(quit: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut quit = quit.clone();
    async move {
        let _ = quit.wait_for(|q| *q).await;
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
