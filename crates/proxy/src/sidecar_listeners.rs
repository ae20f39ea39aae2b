//! The listeners a `Sidecar` resource asks the sidecar to bind itself (`captureMode: NONE`):
//! ingress listeners (inbound traffic to the workload's port, delivered to `defaultEndpoint`)
//! and egress listeners (the application connects to `bind:port`, e.g. `127.0.0.1:9080`,
//! instead of being captured by iptables). Kept equal to the current snapshot's, as the
//! gateway's ports are (see `gateway::listeners`): new ones opened, removed ones closed
//! (connections already accepted finish on their own), one that cannot be bound reported and
//! retried while the others serve.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use sluice_model::sidecar_listeners::{BoundListener, Direction};
use sluice_model::Snapshot;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::context::{Downstream, Proxy, Target};
use crate::detect::{detect, Detected};
use crate::io::PrefixedStream;
use crate::stream::{proxy_bound_stream, StreamConn};

/// How often the listener set looks for a new snapshot.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// How often listeners that could not be bound are tried again without a configuration change.
const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// What `/listeners` shows of the bound listeners.
#[derive(Debug, Clone, Default)]
pub struct BoundStatus {
    /// Open listeners: Envoy-style name (`127.0.0.1_9080`) and address.
    pub bound: Vec<(String, SocketAddr)>,
    /// Listeners the snapshot wants that could not be bound, with the reason.
    pub failed: Vec<(String, String)>,
}

struct Open {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The open Sidecar listeners.
pub struct SidecarListenerSet {
    proxy: Arc<Proxy>,
    open: BTreeMap<BoundListener, Open>,
    status: Arc<ArcSwap<BoundStatus>>,
    /// Bind errors already logged, so retries do not flood the log.
    reported: BTreeMap<BoundListener, String>,
}

impl SidecarListenerSet {
    pub fn new(proxy: Arc<Proxy>) -> SidecarListenerSet {
        SidecarListenerSet {
            proxy,
            open: BTreeMap::new(),
            status: Arc::new(ArcSwap::from_pointee(BoundStatus::default())),
            reported: BTreeMap::new(),
        }
    }

    /// The handle the admin API reads.
    pub fn status(&self) -> Arc<ArcSwap<BoundStatus>> {
        self.status.clone()
    }

    /// Opens the listeners `snap` declares that are not open yet and closes the ones it no
    /// longer declares (waiting until they stopped accepting).
    pub async fn reconcile(&mut self, snap: &Snapshot) {
        let wanted = snap.sidecar_listeners.bound();
        let removed: Vec<BoundListener> = self
            .open
            .keys()
            .filter(|l| !wanted.contains(l))
            .cloned()
            .collect();
        for l in removed {
            if let Some(mut open) = self.open.remove(&l) {
                drop(open.stop.take());
                let _ = (&mut open.task).await;
                tracing::info!("Sidecar listener {} closed (no longer declared)", open.addr);
            }
        }
        let mut failed = Vec::new();
        for l in wanted {
            if self.open.contains_key(&l) {
                continue;
            }
            match TcpListener::bind(l.addr).await {
                Ok(listener) => {
                    let (stop, stopped) = oneshot::channel();
                    let stopped = async move {
                        let _ = stopped.await;
                    };
                    let proxy = self.proxy.clone();
                    let task = match l.direction {
                        Direction::Inbound => tokio::spawn(crate::inbound::serve_bound_inbound(
                            listener, proxy, l.addr, stopped,
                        )),
                        Direction::Outbound => {
                            tokio::spawn(serve_bound_outbound(listener, proxy, l.addr, stopped))
                        }
                    };
                    tracing::info!(
                        "Sidecar {} listener open on {}",
                        direction_name(l.direction),
                        l.addr
                    );
                    self.reported.remove(&l);
                    self.open.insert(
                        l.clone(),
                        Open {
                            addr: l.addr,
                            stop: Some(stop),
                            task,
                        },
                    );
                }
                Err(e) => {
                    let reason = e.to_string();
                    if self.reported.get(&l) != Some(&reason) {
                        tracing::error!(
                            "cannot listen on {} for a Sidecar {} listener: {reason}; retrying every {}s",
                            l.addr,
                            direction_name(l.direction),
                            RETRY_INTERVAL.as_secs()
                        );
                        self.reported.insert(l.clone(), reason.clone());
                    }
                    failed.push((l.name(), reason));
                }
            }
        }
        self.status.store(Arc::new(BoundStatus {
            bound: self.open.iter().map(|(l, o)| (l.name(), o.addr)).collect(),
            failed,
        }));
    }

    /// Reconciles with every new snapshot (and retries failed binds) until `shutdown`
    /// resolves, then closes every listener.
    pub async fn follow(
        mut self,
        snapshots: Arc<ArcSwap<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
        let mut applied = None;
        let mut last_try = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let snap = snapshots.load_full();
            let retry =
                !self.status.load().failed.is_empty() && last_try.elapsed() >= RETRY_INTERVAL;
            if applied != Some(snap.generation) || retry {
                self.reconcile(&snap).await;
                applied = Some(snap.generation);
                last_try = tokio::time::Instant::now();
            }
        }
        for (_, mut open) in std::mem::take(&mut self.open) {
            drop(open.stop.take());
            let _ = (&mut open.task).await;
        }
    }
}

impl Drop for SidecarListenerSet {
    fn drop(&mut self) {
        for open in self.open.values_mut() {
            drop(open.stop.take());
        }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "ingress",
        Direction::Outbound => "egress",
    }
}

/// Accepts connections on a bound Sidecar egress listener at `listen` until `shutdown`.
pub async fn serve_bound_outbound(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) {
    let what = format!("Sidecar egress listener {listen}");
    let mut acceptor = crate::downstream::Acceptor::new(listener, shutdown, what.as_str());
    while let Some((stream, remote)) = acceptor.next().await {
        let Some(guard) = proxy.lifecycle.admit() else {
            crate::outbound::refuse_unready(remote, &what);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _guard = guard;
            dispatch_bound(proxy, stream, remote, listen).await;
        });
    }
}

/// Serves one connection of a bound egress listener: HTTP routed by Host with the listener's
/// scope, anything else to the service the listener's scope gives its port.
async fn dispatch_bound(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    remote: SocketAddr,
    listen: SocketAddr,
) {
    let snap = proxy.snapshots.load_full();
    let Some((declared, scope)) = snap.sidecar_listeners.bound_egress.get(&listen).cloned() else {
        tracing::debug!("closing a connection from {remote}: listener {listen} was removed");
        return;
    };
    let local = stream.local_addr().unwrap_or(listen);
    // The listener's declared protocol decides as a service port's does; else sniff.
    let (prefix, detected) = if declared.is_http() {
        (Bytes::new(), Detected::Http1)
    } else if declared != sluice_model::Protocol::Unknown && !declared.is_tls() {
        (Bytes::new(), Detected::Tcp)
    } else {
        match detect(&mut stream).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("connection from {remote} failed during detection: {e}");
                return;
            }
        }
    };
    let stream = PrefixedStream::new(prefix, stream);
    let target = Target {
        addr: local,
        host: None,
    };
    let (sni, tls) = match detected {
        Detected::Http1 | Detected::Http2 => {
            let downstream = Arc::new(Downstream {
                remote,
                local,
                target: Some(target),
            });
            let lifecycle = proxy.lifecycle.clone();
            let served =
                crate::downstream::serve_http(stream, &lifecycle, move |req: Request<Incoming>| {
                    crate::http_proxy::handle_bound_egress(
                        proxy.clone(),
                        downstream.clone(),
                        listen,
                        req,
                    )
                });
            if let Err(e) = served.await {
                tracing::debug!("HTTP connection on {listen} ended: {e}");
            }
            return;
        }
        Detected::Tls { sni } => (sni, true),
        Detected::Tcp => (None, false),
    };
    let conn = StreamConn {
        remote,
        target,
        sni,
        tls,
    };
    proxy_bound_stream(proxy, scope, stream, conn).await;
}
