//! TCP and TLS (SNI) proxying without terminating anything: route the connection, connect to the
//! chosen endpoint, copy bytes both ways, and log one line per connection.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sluice_model::policy::HashKey;
use sluice_model::route::pick_weighted;
use sluice_model::{Cluster, Snapshot, StreamDecision, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::balancer::{source_ip_hash, CallResult, ClusterRuntime, EndpointGuard};
use crate::context::{Proxy, Target};
use crate::io::CountingStream;
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{Reporter, SecurityPolicy, ServiceLabels, TcpLabels};
use crate::upstream::{connect_tcp, set_keepalive};

/// A connection to proxy as bytes.
pub struct StreamConn {
    pub remote: SocketAddr,
    pub target: Target,
    /// The SNI of the client's ClientHello, when it is TLS.
    pub sni: Option<String>,
    pub tls: bool,
}

enum Plan {
    Connect {
        cluster: Option<Arc<Cluster>>,
        cluster_name: Arc<str>,
        service: Arc<ServiceLabels>,
    },
    Block,
    /// A gateway connection no route claims: Istio builds no filter chain for it, so Envoy
    /// closes it with `NR` (`filter_chain_not_found`) and no cluster.
    NoFilterChain,
}

fn plan(proxy: &Proxy, snap: &Snapshot, conn: &StreamConn) -> Plan {
    let decision = if conn.tls {
        snap.route_tls(conn.sni.as_deref(), conn.target.addr)
    } else {
        snap.route_tcp(conn.target.addr)
    };
    plan_decision(proxy, decision, conn.target.addr.port())
}

/// A gateway's plan for a connection on its listener `port`: PASSTHROUGH TLS servers route by
/// SNI with the `tls` routes bound to the gateway, TCP servers with its `tcp` routes. A gateway
/// has no original destination to pass through to: what no route claims is closed (NR).
fn plan_gateway(proxy: &Proxy, snap: &Snapshot, conn: &StreamConn, port: u16) -> Plan {
    let decision = if conn.tls {
        snap.route_gateway_tls(port, conn.sni.as_deref())
    } else {
        snap.route_gateway_tcp(port)
    };
    match decision {
        StreamDecision::Passthrough | StreamDecision::Blocked => Plan::NoFilterChain,
        d => plan_decision(proxy, d, port),
    }
}

fn plan_decision(proxy: &Proxy, decision: StreamDecision<'_>, port: u16) -> Plan {
    let known = |c: &Arc<Cluster>| Plan::Connect {
        cluster: Some(c.clone()),
        cluster_name: c.name.clone(),
        service: proxy.service_labels(c),
    };
    match decision {
        StreamDecision::Cluster(c) => known(c),
        StreamDecision::Rule(rule) => match pick_weighted(&rule.targets, rand::random::<f64>())
            .map(|t| t.cluster.resolve(port))
        {
            Some(Ok(c)) => known(c),
            Some(Err(missing)) => {
                tracing::debug!("{} points at missing cluster {missing}", rule.source);
                Plan::Block
            }
            None => Plan::Block,
        },
        StreamDecision::Passthrough => Plan::Connect {
            cluster: None,
            cluster_name: Arc::from(PASSTHROUGH_CLUSTER),
            service: proxy.passthrough_labels.clone(),
        },
        StreamDecision::Blocked => Plan::Block,
    }
}

/// Where a connection goes: the cluster's balancer (`useSourceIp` hashing works for TCP too),
/// or the original destination. The guard counts the connection as active on the endpoint.
async fn upstream_addr(
    proxy: &Proxy,
    conn: &StreamConn,
    runtime: Option<&Arc<ClusterRuntime>>,
) -> Option<(SocketAddr, Option<EndpointGuard>)> {
    match runtime.filter(|rt| !rt.is_original_destination()) {
        None => match &conn.target.host {
            Some(h) => proxy
                .resolver
                .resolve(h, conn.target.addr.port())
                .await
                .ok()
                .map(|a| (a[0], None)),
            None => Some((conn.target.addr, None)),
        },
        Some(rt) => {
            let hash = match rt.hash_policy().map(|h| h.key) {
                Some(HashKey::SourceIp) => Some(source_ip_hash(conn.remote.ip())),
                _ => None,
            };
            let guard = rt.pick(hash, &[])?;
            let ep = guard.endpoint();
            let addr = proxy.endpoint_socket(&ep.address, ep.port, 0).await?;
            Some((addr, Some(guard)))
        }
    }
}

/// Proxies `downstream` (with any detection bytes already replayed by the stream itself).
pub async fn proxy_stream<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    downstream: S,
    conn: StreamConn,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let plan = plan(&proxy, &snap, &conn);
    carry_out(proxy, snap, downstream, conn, plan, start).await;
}

/// Proxies a connection accepted on gateway listener `port` (PASSTHROUGH / AUTO_PASSTHROUGH TLS
/// servers, or TCP servers); `conn.target` is the listener's own address. Any peeked bytes must
/// already be replayed by `downstream`.
pub async fn proxy_gateway_stream<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    downstream: S,
    conn: StreamConn,
    port: u16,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let plan = plan_gateway(&proxy, &snap, &conn, port);
    carry_out(proxy, snap, downstream, conn, plan, start).await;
}

async fn carry_out<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    mut downstream: S,
    conn: StreamConn,
    plan: Plan,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rec = AccessLogRecord::new(SystemTime::now());
    rec.downstream_remote_address = Some(conn.remote);
    rec.downstream_local_address = Some(conn.target.addr);
    // Unlike Istio, blocked TLS lines carry the SNI too: operators need the refused host (#33281).
    rec.requested_server_name = conn.sni.as_deref().map(Arc::from);
    let (cluster, cluster_name, service) = match plan {
        Plan::Connect {
            cluster,
            cluster_name,
            service,
        } => (cluster, cluster_name, service),
        Plan::Block => {
            let labels = tcp_labels(&proxy, proxy.blackhole_labels.clone(), "UH");
            proxy.metrics.tcp_opened(&labels);
            proxy.metrics.tcp_closed(&labels, 0, 0);
            rec.response_flags = Cow::Borrowed("UH");
            rec.upstream_cluster = Some(Arc::from(BLACKHOLE_CLUSTER));
            rec.duration = start.elapsed();
            proxy.access_log.log(rec);
            return;
        }
        Plan::NoFilterChain => {
            rec.response_flags = Cow::Borrowed("NR");
            rec.response_code_details = Some(Cow::Borrowed("filter_chain_not_found"));
            rec.duration = start.elapsed();
            proxy.access_log.log(rec);
            return;
        }
    };
    rec.upstream_cluster = Some(cluster_name.clone());
    let runtime = cluster.as_ref().map(|c| proxy.cluster_runtime(c));
    let connect_timeout = runtime
        .as_ref()
        .map_or(snap.mesh.connect_timeout, |rt| rt.limits().connect_timeout);
    let mut flags = "UH";
    let mut held = None;
    let upstream = match upstream_addr(&proxy, &conn, runtime.as_ref()).await {
        Some((addr, endpoint)) => {
            rec.upstream_host = Some(addr);
            // maxConnections: a TCP connection over the limit is refused (UO).
            match runtime
                .as_ref()
                .map(|rt| rt.try_acquire_connection(addr))
                .transpose()
            {
                Err(_) => {
                    flags = "UO";
                    None
                }
                Ok(slot) => {
                    flags = "UF";
                    let connected = connect_tcp(addr, connect_timeout).await;
                    if let Some(ep) = &endpoint {
                        // Connect failures and timeouts are local-origin errors for outlier
                        // detection; an established connection is the stream's success.
                        ep.report(match &connected {
                            Ok(_) => CallResult::Connected,
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                                CallResult::Timeout
                            }
                            Err(_) => CallResult::ConnectFailed,
                        });
                    }
                    let keepalive = runtime.as_ref().and_then(|rt| rt.limits().tcp_keepalive);
                    if let (Ok(tcp), Some(ka)) = (&connected, keepalive) {
                        if let Err(e) = set_keepalive(tcp, &ka) {
                            tracing::debug!("cannot set TCP keepalive towards {addr}: {e}");
                        }
                    }
                    held = Some((slot, endpoint));
                    connected.ok()
                }
            }
        }
        None => None,
    };
    let Some(mut upstream) = upstream else {
        let labels = tcp_labels(&proxy, service, flags);
        proxy.metrics.tcp_opened(&labels);
        proxy.metrics.tcp_closed(&labels, 0, 0);
        rec.response_flags = Cow::Borrowed(flags);
        rec.duration = start.elapsed();
        proxy.access_log.log(rec);
        return;
    };
    rec.upstream_local_address = upstream.local_addr().ok();
    let mut labels = tcp_labels(&proxy, service, "-");
    if let Some(addr) = rec.upstream_host {
        labels.destination = proxy.peer_at(&snap, addr.ip());
    }
    proxy.metrics.tcp_opened(&labels);
    let mut counted = CountingStream::new(&mut downstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut counted, &mut upstream).await {
        tracing::debug!("stream to {cluster_name} ended: {e}");
    }
    let (received, sent) = (counted.read, counted.written);
    drop(held);
    proxy.metrics.tcp_closed(&labels, sent, received);
    rec.bytes_received = received;
    rec.bytes_sent = sent;
    rec.duration = start.elapsed();
    proxy.access_log.log(rec);
}

fn tcp_labels(proxy: &Proxy, service: Arc<ServiceLabels>, flags: &'static str) -> TcpLabels {
    TcpLabels {
        reporter: Reporter::Source,
        source: proxy.workload.clone(),
        destination: proxy.unknown_peer.clone(),
        destination_service: service,
        response_flags: Cow::Borrowed(flags),
        connection_security_policy: SecurityPolicy::Unknown,
    }
}
