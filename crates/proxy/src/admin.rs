//! The operator-facing HTTP servers: Envoy's admin API (15000), the readiness port (15021) and the
//! Prometheus port (15090).
//!
//! The admin API mirrors the Envoy endpoints that `istioctl proxy-config`, operators' scripts and
//! Prometheus use (`/config_dump`, `/clusters`, `/listeners`, `/stats`, `/stats/prometheus`, `/ready`,
//! `/server_info`, `/certs`, `/logging`, `POST /quitquitquit`, `POST /drain_listeners`,
//! `POST /healthcheck/fail|ok`). As in Envoy, endpoints that change the server must be POSTed; a
//! GET on them answers 400. What operators can change at run time (log levels, draining, the
//! health override) lives in [`AdminControls`], shared with the health port. What the proxy knows (config, clusters, readiness) comes from an
//! [`AdminSource`] the data plane implements, so this module depends on no data-path type.

mod api;
mod logging;
mod server;
mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::identity::Identity;

pub use server::{
    respond, respond_json, serve_admin, serve_admin_with, serve_http, serve_stats, serve_status,
    serve_status_with, Handler, MAX_ADMIN_RESPONSE,
};
pub use views::{
    certs_json, cluster_config, gateway_routes, listeners_text, route_matches, WithGatewayRoutes,
};

pub const TEXT: &str = "text/plain; charset=UTF-8";
pub const JSON: &str = "application/json";

/// What the admin servers report about the proxy. Implemented by the data plane.
pub trait AdminSource: Send + Sync + 'static {
    /// `GET /config_dump`: Envoy's `ConfigDump` shape (`{"configs":[…]}`) or sluice's equivalent.
    fn config_dump(&self) -> serde_json::Value;
    /// `GET /clusters`: Envoy's `<cluster>::<host>::<stat>::<value>` lines.
    fn clusters_text(&self) -> String;
    /// `GET /clusters?format=json`: `{"cluster_statuses":[…]}`.
    fn clusters_json(&self) -> serde_json::Value;
    /// `GET /listeners`: `<name>::<address>` lines.
    fn listeners_text(&self) -> String;
    /// True once configuration has been loaded and listeners are serving.
    fn is_ready(&self) -> bool;
    /// Why the proxy is not ready, shown by `/healthz/ready` with its 503.
    fn not_ready_reason(&self) -> String {
        "configuration not loaded yet".to_string()
    }
}

// === QuitSignal ===

/// Fired by `POST /quitquitquit`. Clone it, give one clone to [`serve_admin`], and await
/// [`triggered`](Self::triggered) to start the proxy's shutdown. Firing is sticky: a waiter that starts
/// after the request still sees it.
#[derive(Clone, Debug, Default)]
pub struct QuitSignal {
    inner: Arc<QuitInner>,
}

#[derive(Debug, Default)]
struct QuitInner {
    fired: AtomicBool,
    notify: Notify,
}

impl QuitSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (what `POST /quitquitquit` does).
    pub fn trigger(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// True once fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Completes when the signal fires (at once if it already has).
    pub async fn triggered(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag, so a trigger between the check and the await is not lost.
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

// === Operator controls ===

/// Changes sluice's own log filter (the process's `tracing` subscriber). The binary installs one
/// (a `tracing_subscriber` reload handle); `POST /logging` drives it.
pub trait LogControl: Send + Sync + 'static {
    /// The filter the process started with, in `EnvFilter` syntax (`info`,
    /// `info,sluice_proxy=debug`).
    fn initial(&self) -> String;
    /// Replaces the filter. Errors say why the directives were refused.
    fn apply(&self, directives: &str) -> Result<(), String>;
}

/// Why a proxy whose configuration has not been accepted is not ready, for `/healthz/ready`.
pub fn config_not_ready_reason(status: &crate::store::StoreStatus) -> String {
    if status.not_ready.is_empty() {
        return "configuration not loaded yet".to_string();
    }
    status.not_ready.join("\n")
}

/// Fired by `POST /drain_listeners`: the data-plane listeners stop accepting (open connections
/// are served to their end), `/ready` and `/healthz/ready` answer 503. Sticky, like [`QuitSignal`].
#[derive(Clone, Debug, Default)]
pub struct DrainSignal(QuitSignal);

impl DrainSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }
    /// Starts draining.
    pub fn trigger(&self) {
        self.0.trigger();
    }
    /// True once draining.
    pub fn is_triggered(&self) -> bool {
        self.0.is_triggered()
    }
    /// Completes when draining starts (at once if it has).
    pub async fn triggered(&self) {
        self.0.triggered().await;
    }
}

/// Set by `POST /healthcheck/fail`, cleared by `POST /healthcheck/ok`: `/healthz/ready` answers
/// 503 while set, without touching traffic (Envoy's health-check filter override).
#[derive(Clone, Debug, Default)]
pub struct HealthOverride(Arc<AtomicBool>);

impl HealthOverride {
    /// Marks the proxy as failing (`true`) or healthy again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.0.store(failing, Ordering::SeqCst);
    }
    /// True after `POST /healthcheck/fail`.
    pub fn is_failing(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What operators can change or inspect at run time beyond [`AdminSource`]. The default has no
/// log control (so `POST /logging` answers 501) and no identity (`/certs` lists none).
#[derive(Clone, Default)]
pub struct AdminControls {
    pub drain: DrainSignal,
    pub health: HealthOverride,
    pub log: Option<Arc<dyn LogControl>>,
    /// The mesh identity shown by `/certs`.
    pub identity: Option<Arc<Identity>>,
}

impl std::fmt::Debug for AdminControls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminControls")
            .field("drain", &self.drain)
            .field("health", &self.health)
            .field("log", &self.log.is_some())
            .field("identity", &self.identity.as_ref().map(|i| i.spiffe_id()))
            .finish()
    }
}
