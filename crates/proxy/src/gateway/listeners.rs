//! The gateway's listening ports, kept equal to the ports of the current snapshot's Gateway
//! servers: new ports are opened, removed ones closed (connections already accepted finish on
//! their own), and a port that cannot be bound is reported and retried with the next snapshot
//! while the others keep serving.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_model::gateway::ServerTlsMode;
use sluice_model::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::conn::serve_connection;
use super::Gateway;

/// How often the listener set looks for a new snapshot.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// How often ports that could not be bound, and server certificates that could not be loaded,
/// are tried again without a configuration change (a port freed by another process, a Secret
/// volume mounted late).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// What `/listeners` and readiness report.
#[derive(Debug, Clone, Default)]
pub struct ListenerStatus {
    /// Open listeners by Envoy-style name (`0.0.0.0_80`), in port order.
    pub bound: Vec<(String, SocketAddr)>,
    /// Ports the snapshot wants that could not be bound, with the reason.
    pub failed: Vec<(u16, String)>,
    /// Servers that terminate TLS but whose certificate cannot be loaded, with the reason.
    pub tls_failed: Vec<(String, String)>,
    /// The snapshot generation these listeners were reconciled with.
    pub generation: u64,
}

impl ListenerStatus {
    /// Envoy's `/listeners` text: `<name>::<address>` lines.
    pub fn listeners_text(&self) -> String {
        crate::admin::listeners_text(&self.bound)
    }

    /// Ready once the listeners have been reconciled with a loaded configuration and every
    /// port it declares is bound. A later configuration change does not make the gateway
    /// unready while its listeners catch up (within `FOLLOW_INTERVAL`).
    pub fn is_ready(&self) -> bool {
        self.generation > 0 && self.failed.is_empty() && self.tls_failed.is_empty()
    }

    /// Why [`is_ready`](Self::is_ready) is false.
    pub fn not_ready_reason(&self) -> String {
        let mut reasons = Vec::new();
        if !self.failed.is_empty() {
            let ports: Vec<String> = self
                .failed
                .iter()
                .map(|(port, reason)| format!("{port} ({reason})"))
                .collect();
            reasons.push(format!("gateway ports not bound: {}", ports.join("; ")));
        }
        if !self.tls_failed.is_empty() {
            let servers: Vec<String> = self
                .tls_failed
                .iter()
                .map(|(server, reason)| format!("{server}: {reason}"))
                .collect();
            reasons.push(format!(
                "gateway server certificates not loaded: {}",
                servers.join("; ")
            ));
        }
        if reasons.is_empty() && self.generation == 0 {
            reasons.push("gateway listeners not opened yet".to_string());
        }
        reasons.join("\n")
    }
}

/// Envoy's name for a gateway listener: `0.0.0.0_80`.
pub fn listener_name(bind: IpAddr, port: u16) -> String {
    format!("{bind}_{port}")
}

struct Open {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The open gateway listeners.
pub struct ListenerSet {
    bind: IpAddr,
    gateway: Arc<Gateway>,
    open: BTreeMap<u16, Open>,
    status: Arc<ArcSwap<ListenerStatus>>,
    /// Bind errors already logged at error level, so a retry every few seconds does not flood
    /// the log.
    reported: BTreeMap<u16, String>,
}

impl ListenerSet {
    /// An empty set that binds on `bind`.
    pub fn new(bind: IpAddr, gateway: Arc<Gateway>) -> ListenerSet {
        ListenerSet {
            bind,
            gateway,
            open: BTreeMap::new(),
            status: Arc::new(ArcSwap::from_pointee(ListenerStatus::default())),
            reported: BTreeMap::new(),
        }
    }

    /// The handle the admin API reads.
    pub fn status(&self) -> Arc<ArcSwap<ListenerStatus>> {
        self.status.clone()
    }

    /// The open listeners: gateway port and bound address.
    pub fn bound(&self) -> impl Iterator<Item = (u16, SocketAddr)> + '_ {
        self.open.iter().map(|(port, o)| (*port, o.addr))
    }

    /// Opens the ports `snap` declares that are not open yet (including ones that failed
    /// before) and closes the ones it no longer declares. Waits until closed listeners have
    /// stopped accepting.
    pub async fn reconcile(&mut self, snap: &Snapshot) {
        let wanted: BTreeSet<u16> = snap
            .gateway_ports()
            .iter()
            .filter(|p| p.number != 0)
            .map(|p| p.number)
            .collect();
        let removed: Vec<u16> = self
            .open
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for port in removed {
            if let Some(mut open) = self.open.remove(&port) {
                drop(open.stop.take());
                let _ = (&mut open.task).await;
                tracing::info!(
                    "gateway port {port} closed ({} no longer declared)",
                    open.addr
                );
            }
        }
        let mut failed = Vec::new();
        for port in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let addr = listener.local_addr().unwrap_or(addr);
                    let (stop, stopped) = oneshot::channel();
                    let task =
                        tokio::spawn(accept_loop(listener, self.gateway.clone(), port, stopped));
                    tracing::info!("gateway port {port} listening on {addr}");
                    self.open.insert(
                        port,
                        Open {
                            addr,
                            stop: Some(stop),
                            task,
                        },
                    );
                }
                Err(e) => {
                    let reason = bind_failure(port, &e);
                    if self.reported.get(&port) != Some(&reason) {
                        tracing::error!(
                            "cannot listen on {addr} for gateway port {port}: {reason}; retrying every {}s",
                            RETRY_INTERVAL.as_secs()
                        );
                        self.reported.insert(port, reason.clone());
                    }
                    failed.push((port, reason));
                    continue;
                }
            }
            if self.reported.remove(&port).is_some() {
                tracing::info!("gateway port {port} bound after earlier failures");
            }
        }
        let tls_failed = self.check_certificates(snap);
        self.status.store(Arc::new(ListenerStatus {
            bound: self
                .open
                .iter()
                .map(|(port, o)| (listener_name(self.bind, *port), o.addr))
                .collect(),
            failed,
            tls_failed,
            generation: snap.generation,
        }));
    }

    /// Loads the certificate of every server that terminates TLS, so a missing or unreadable
    /// file shows in readiness (and the log) before a client fails its handshake.
    fn check_certificates(&self, snap: &Snapshot) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for port in snap.gateway_ports() {
            for server in &port.servers {
                let terminates = server.tls.as_ref().is_some_and(|tls| {
                    matches!(
                        tls.mode,
                        ServerTlsMode::Simple
                            | ServerTlsMode::Mutual
                            | ServerTlsMode::OptionalMutual
                    )
                });
                if !terminates {
                    continue;
                }
                if let Err(e) = self.gateway.tls.config_for(server) {
                    let key = server.source.clone();
                    self.gateway.warn_once(
                        &key,
                        &format!(
                            "gateway server {}: TLS cannot be served: {e}",
                            server.source
                        ),
                    );
                    failed.push((server.source.to_string(), e.to_string()));
                }
            }
        }
        failed
    }

    /// Reconciles with every new snapshot until `shutdown` resolves, then closes every listener.
    pub async fn follow(
        mut self,
        snapshots: Arc<ArcSwap<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
        let mut applied = self.status.load().generation;
        let mut last_try = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let snap = snapshots.load_full();
            let unready = !self.status.load().is_ready();
            if snap.generation != applied || (unready && last_try.elapsed() >= RETRY_INTERVAL) {
                self.reconcile(&snap).await;
                applied = snap.generation;
                last_try = tokio::time::Instant::now();
            }
        }
        self.close_all().await;
    }

    /// Stops accepting on every port.
    pub async fn close_all(&mut self) {
        for (_, mut open) in std::mem::take(&mut self.open) {
            drop(open.stop.take());
            let _ = (&mut open.task).await;
        }
        self.status.rcu(|s| ListenerStatus {
            bound: Vec::new(),
            failed: Vec::new(),
            tls_failed: Vec::new(),
            generation: s.generation,
        });
    }
}

impl Drop for ListenerSet {
    fn drop(&mut self) {
        // Dropping the stop senders ends the accept loops.
        for open in self.open.values_mut() {
            drop(open.stop.take());
        }
    }
}

/// Why a port could not be bound, with what the operator can do about it.
fn bind_failure(port: u16, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if port < 1024 => format!(
            "{e}: ports below 1024 need CAP_NET_BIND_SERVICE (e.g. `setcap cap_net_bind_service=+ep $(command -v sluice)`, \
             or AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit), or use a port of 1024 or above \
             in the Gateway server and map it (Istio's gateways listen on 8080/8443 behind their Service)"
        ),
        std::io::ErrorKind::AddrInUse => {
            format!("{e}: another process listens on this port; stop it or use another port")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{e}: the bind address is not on this host (--bind)")
        }
        _ => e.to_string(),
    }
}

async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    port: u16,
    stop: oneshot::Receiver<()>,
) {
    let what = format!("gateway port {port}");
    let mut acceptor = crate::downstream::Acceptor::new(
        listener,
        async move {
            let _ = stop.await;
        },
        what.as_str(),
    );
    let fallback_local = acceptor.local_addr();
    while let Some((stream, remote)) = acceptor.next().await {
        let Some(guard) = gateway.proxy.lifecycle.admit() else {
            crate::outbound::refuse_unready(remote, &what);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(local) = stream.local_addr().ok().or(fallback_local) else {
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve_connection(gateway, stream, remote, local, port).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_failures_say_what_to_do() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = bind_failure(443, &denied);
        assert!(msg.contains("CAP_NET_BIND_SERVICE"), "{msg}");
        assert!(msg.contains("1024"), "{msg}");
        // Above 1024 a permission error is not about privileged ports.
        assert!(!bind_failure(8443, &denied).contains("CAP_NET_BIND_SERVICE"));
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(bind_failure(80, &busy).contains("another process"));
    }

    #[test]
    fn readiness_names_every_cause() {
        let status = ListenerStatus {
            bound: Vec::new(),
            failed: vec![(8080, "in use".into())],
            tls_failed: vec![(
                "Gateway istio-system/gw server 2".into(),
                "no such file".into(),
            )],
            generation: 1,
        };
        assert!(!status.is_ready());
        let reason = status.not_ready_reason();
        assert!(reason.contains("8080 (in use)"), "{reason}");
        assert!(reason.contains("no such file"), "{reason}");
    }
}
