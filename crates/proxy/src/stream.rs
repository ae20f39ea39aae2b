//! TCP and TLS (SNI) proxying without terminating anything: route the connection, connect to the
//! chosen endpoint (originating Istio mutual TLS when the cluster asks for it), copy bytes both
//! ways, and log one line per connection.
//!
//! Also the connection-level security facts shared by every listener: the verified mesh peer of
//! a downstream connection ([`DownstreamPeer`]) and how an AuthorizationPolicy denial is named
//! in the access log.

use sluice_model::telemetry_policy::WorkloadMode;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_model::policy::HashKey;
use sluice_model::route::pick_weighted;
use sluice_model::security::{AuthzDecision, AuthzRequest};
use sluice_model::{Cluster, Snapshot, StreamDecision, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::balancer::{source_ip_hash, CallResult, ClusterRuntime, EndpointGuard};
use crate::context::{Proxy, Target};
use crate::identity::principal_of;
use crate::io::CountingStream;
use crate::resolve::ResolveError;
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{
    BlockedProtocol, PeerLabels, Reporter, SecurityPolicy, ServiceLabels, TcpLabels,
};
use crate::upstream::{
    connect_tcp, istio_mutual_connect, security_for, set_keepalive, StreamUpstream,
    UpstreamSecurity, TLS_ERROR_PREFIX,
};

// === Downstream mTLS peer and authorization ===

/// The verified mesh identity of a downstream connection whose mutual TLS this proxy
/// terminated (inbound STRICT/PERMISSIVE, gateway ISTIO_MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamPeer {
    /// `spiffe://cluster.local/ns/NS/sa/SA`; `None` when the certificate has no SPIFFE URI SAN.
    pub spiffe_id: Option<Arc<str>>,
}

impl DownstreamPeer {
    /// Istio's principal form, `cluster.local/ns/NS/sa/SA`.
    pub fn principal(&self) -> Option<&str> {
        self.spiffe_id.as_deref().map(principal_of)
    }

    /// The namespace in the peer's SPIFFE ID (`…/ns/NS/sa/SA`).
    pub fn namespace(&self) -> Option<&str> {
        let principal = self.principal()?;
        let mut parts = principal.split('/');
        while let Some(p) = parts.next() {
            if p == "ns" {
                return parts.next().filter(|n| !n.is_empty());
            }
        }
        None
    }

    /// `source_principal` labels for this peer over `labels` (a registry workload or unknown).
    pub fn labels(&self, labels: &Arc<PeerLabels>) -> Arc<PeerLabels> {
        match &self.spiffe_id {
            Some(id) => with_principal(labels, id),
            None => labels.clone(),
        }
    }
}

/// `labels` with `*_principal` set.
pub fn with_principal(labels: &Arc<PeerLabels>, principal: &str) -> Arc<PeerLabels> {
    if &*labels.principal == principal {
        return labels.clone();
    }
    let mut l = PeerLabels::clone(labels);
    l.principal = Arc::from(principal);
    Arc::new(l)
}

/// `connection_security_policy` at the server side of a connection.
pub fn server_security_policy(peer: Option<&DownstreamPeer>) -> SecurityPolicy {
    if peer.is_some() {
        SecurityPolicy::MutualTls
    } else {
        SecurityPolicy::None
    }
}

/// Envoy's RBAC details for a denial: `rbac_access_denied_matched_policy[<policy>]`
/// (`%RESPONSE_CODE_DETAILS%` for HTTP, `%CONNECTION_TERMINATION_DETAILS%` for TCP).
pub fn rbac_denied_details(policy: &str) -> String {
    format!("rbac_access_denied_matched_policy[{policy}]")
}

/// Checks a TCP/TLS connection against the AuthorizationPolicies of `snap` (network RBAC: no
/// HTTP attributes). `Some(details)` when it is denied.
pub fn authorize_connection(
    snap: &Snapshot,
    peer: Option<&DownstreamPeer>,
    remote: SocketAddr,
    port: u16,
    sni: Option<&str>,
) -> Option<String> {
    if snap.authorization.is_empty() {
        return None;
    }
    let req = AuthzRequest {
        source_principal: peer.and_then(DownstreamPeer::principal),
        source_namespace: peer.and_then(DownstreamPeer::namespace),
        source_ip: Some(remote.ip()),
        host: None,
        port,
        method: None,
        path: None,
        sni,
        headers: None,
        request_auth: None,
    };
    match snap.authorization.check(&req) {
        AuthzDecision::Allow => None,
        AuthzDecision::Deny { policy } => Some(rbac_denied_details(&policy)),
    }
}

/// Logs a connection closed by an AuthorizationPolicy: flag `-`, Envoy's network RBAC details
/// in `%CONNECTION_TERMINATION_DETAILS%`.
pub fn log_connection_denied(
    proxy: &Proxy,
    mut rec: AccessLogRecord,
    details: String,
    mode: WorkloadMode,
) {
    tracing::debug!(
        "connection from {} denied: {details}",
        rec.downstream_remote_address
            .map_or_else(|| "-".to_string(), |a| a.to_string())
    );
    rec.response_flags = Cow::Borrowed("-");
    rec.connection_termination_details = Some(Cow::Owned(details));
    proxy.log_connection(rec, mode);
}

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

/// Why a connection has no upstream address.
enum NoUpstream {
    /// No endpoint to pick, or nothing to route to (`UH`).
    NoHost,
    /// The endpoint's or the SNI's name did not resolve within the connect timeout (`DF`).
    Dns(ResolveError),
}

impl From<ResolveError> for NoUpstream {
    fn from(e: ResolveError) -> Self {
        NoUpstream::Dns(e)
    }
}

/// Where a connection goes: the cluster's balancer (`useSourceIp` hashing works for TCP too),
/// or the original destination. The guard counts the connection as active on the endpoint. A
/// name resolved for the first time is waited for at most `connect_timeout`.
///
/// A gateway has no original destination (the client connected to the gateway itself): an
/// original-destination cluster (a wildcard or `resolution: NONE`/`DYNAMIC_DNS` ServiceEntry)
/// is reached at what the SNI resolves to, on the service port's target.
async fn upstream_addr(
    proxy: &Proxy,
    conn: &StreamConn,
    runtime: Option<&Arc<ClusterRuntime>>,
    gateway: bool,
    connect_timeout: Duration,
) -> Result<(SocketAddr, Option<EndpointGuard>), NoUpstream> {
    match runtime.filter(|rt| !rt.is_original_destination()) {
        None if gateway => {
            let cluster = runtime.ok_or(NoUpstream::NoHost)?.cluster();
            let port = cluster.original_destination_port(sluice_model::ProxyKind::Gateway);
            let Some(sni) = conn.sni.as_deref() else {
                tracing::debug!(
                    "{}: a gateway cannot pass a connection without SNI to an original destination",
                    cluster.name
                );
                return Err(NoUpstream::NoHost);
            };
            // IPv4 first, as Istio's default DNS lookup family.
            let addrs = proxy.resolver.resolve(sni, connect_timeout).await?;
            Ok((addrs.socket(0, port), None))
        }
        None => match &conn.target.host {
            Some(h) => {
                let addrs = proxy.resolver.resolve(h, connect_timeout).await?;
                Ok((addrs.socket(0, conn.target.addr.port()), None))
            }
            None => Ok((conn.target.addr, None)),
        },
        Some(rt) => {
            let hash = match rt.hash_policy().map(|h| h.key) {
                Some(HashKey::SourceIp) => Some(source_ip_hash(conn.remote.ip())),
                _ => None,
            };
            let guard = rt.pick(hash, &[]).ok_or(NoUpstream::NoHost)?;
            let ep = guard.endpoint();
            let addr = proxy
                .endpoint_socket(&ep.address, ep.port, 0, connect_timeout)
                .await?;
            Ok((addr, Some(guard)))
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
    let side = Side {
        gateway_port: None,
        peer: None,
    };
    carry_out(proxy, snap, downstream, conn, plan, start, side).await;
}

/// Proxies a connection accepted on a Sidecar egress listener the sidecar bound itself
/// (`conn.target` is the listener's own address), routed by `snap`, that listener's scope.
pub async fn proxy_bound_stream<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    downstream: S,
    conn: StreamConn,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let port = conn.target.addr.port();
    let decision = snap.route_bound_stream(conn.sni.as_deref(), port);
    let plan = plan_decision(&proxy, decision, port);
    let side = Side {
        gateway_port: None,
        peer: None,
    };
    carry_out(proxy, snap, downstream, conn, plan, start, side).await;
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
    proxy_gateway_stream_from(proxy, snap, downstream, conn, port, None).await;
}

/// [`proxy_gateway_stream`] for a connection whose mutual TLS the gateway terminated
/// (ISTIO_MUTUAL servers): `peer` is the client's mesh identity, for authorization, the access
/// log (`%DOWNSTREAM_PEER_URI_SAN%`) and metrics.
pub async fn proxy_gateway_stream_from<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    downstream: S,
    conn: StreamConn,
    port: u16,
    peer: Option<DownstreamPeer>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut plan = plan_gateway(&proxy, &snap, &conn, port);
    if peer.is_some() && matches!(plan, Plan::NoFilterChain) {
        // The egress-gateway pattern: the sidecar wraps the application's TLS in mesh mTLS and
        // the gateway's VirtualService routes the port with `tcp` routes (the inner SNI is for
        // the external host, which no PASSTHROUGH server lists).
        if let d @ (StreamDecision::Rule(_) | StreamDecision::Cluster(_)) =
            snap.route_gateway_tcp(port)
        {
            plan = plan_decision(&proxy, d, port);
        }
    }
    let side = Side {
        gateway_port: Some(port),
        peer,
    };
    carry_out(proxy, snap, downstream, conn, plan, start, side).await;
}

/// Which listener a stream came through.
struct Side {
    /// Gateways: the listener port (authorization applies; no original destination).
    gateway_port: Option<u16>,
    /// The downstream's mesh identity, when this proxy terminated its mutual TLS.
    peer: Option<DownstreamPeer>,
}

async fn carry_out<S>(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    mut downstream: S,
    conn: StreamConn,
    plan: Plan,
    start: Instant,
    side: Side,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rec = AccessLogRecord::new(SystemTime::now());
    rec.downstream_remote_address = Some(conn.remote);
    rec.downstream_local_address = Some(conn.target.addr);
    rec.downstream_peer_uri_san = side.peer.as_ref().and_then(|p| p.spiffe_id.clone());
    // Unlike Istio, blocked TLS lines carry the SNI too: operators need the refused host (#33281).
    rec.requested_server_name = conn.sni.as_deref().map(Arc::from);
    let (cluster, cluster_name, service) = match plan {
        Plan::Connect {
            cluster,
            cluster_name,
            service,
        } => (cluster, cluster_name, service),
        Plan::Block => {
            count_blocked(&proxy, &conn);
            let labels = tcp_labels(&proxy, proxy.blackhole_labels.clone(), "UH");
            proxy.metrics.tcp_opened(&labels);
            proxy.metrics.tcp_closed(&labels, 0, 0);
            rec.response_flags = Cow::Borrowed("UH");
            rec.upstream_cluster = Some(Arc::from(BLACKHOLE_CLUSTER));
            rec.duration = start.elapsed();
            proxy.log_connection(rec, WorkloadMode::Client);
            return;
        }
        Plan::NoFilterChain => {
            count_blocked(&proxy, &conn);
            rec.response_flags = Cow::Borrowed("NR");
            rec.response_code_details = Some(Cow::Borrowed("filter_chain_not_found"));
            rec.duration = start.elapsed();
            proxy.access_log.log(rec);
            return;
        }
    };
    if let Some(port) = side.gateway_port {
        // Network RBAC runs before the TCP proxy: a denied connection never reaches upstream.
        let denied = authorize_connection(
            &snap,
            side.peer.as_ref(),
            conn.remote,
            port,
            conn.sni.as_deref(),
        );
        if let Some(details) = denied {
            log_connection_denied(&proxy, rec, details, WorkloadMode::Client);
            return;
        }
    }
    rec.upstream_cluster = Some(cluster_name.clone());
    let security = cluster.as_ref().map_or(UpstreamSecurity::Plain, |c| {
        match security_for(proxy.identity.as_ref(), c, &c.service.hostname) {
            // DestinationRule SIMPLE/MUTUAL applies to HTTP; TCP/TLS streams keep the
            // client's bytes as they are.
            UpstreamSecurity::Tls { .. } => UpstreamSecurity::Plain,
            s => s,
        }
    });
    let runtime = cluster.as_ref().map(|c| proxy.cluster_runtime(c));
    let limits = runtime.as_ref().map(|rt| rt.limits());
    let connect_timeout = limits
        .as_ref()
        .map_or(snap.mesh.connect_timeout, |l| l.connect_timeout);
    let mut flags = "UH";
    let mut held = None;
    let gateway = side.gateway_port.is_some();
    let target = upstream_addr(&proxy, &conn, runtime.as_ref(), gateway, connect_timeout).await;
    let upstream = match target {
        Ok((addr, endpoint)) => {
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
                    let keepalive = limits.as_ref().and_then(|l| l.tcp_keepalive.as_ref());
                    if let (Ok(tcp), Some(ka)) = (&connected, keepalive) {
                        if let Err(e) = set_keepalive(tcp, ka) {
                            tracing::debug!("cannot set TCP keepalive towards {addr}: {e}");
                        }
                    }
                    held = Some((slot, endpoint));
                    connected.ok()
                }
            }
        }
        Err(NoUpstream::NoHost) => None,
        Err(NoUpstream::Dns(e)) => {
            tracing::debug!("{cluster_name}: {e}");
            flags = "DF";
            rec.response_code_details = Some(Cow::Borrowed(e.details()));
            None
        }
    };
    let upstream = match (upstream, &security) {
        (
            Some(tcp),
            UpstreamSecurity::IstioMutual {
                identity,
                sni,
                expected_sans,
            },
        ) => {
            let local = tcp.local_addr().ok();
            match istio_mutual_connect(&identity.0, expected_sans, sni, tcp).await {
                Ok(tls) => Some(StreamUpstream::Tls(Box::new(tls))),
                Err(e) => {
                    tracing::debug!("ISTIO_MUTUAL to {cluster_name} failed: {e}");
                    rec.upstream_local_address = local;
                    rec.upstream_transport_failure_reason = Some(Cow::Owned(
                        e.to_string()
                            .trim_start_matches(TLS_ERROR_PREFIX)
                            .replace(' ', "_"),
                    ));
                    flags = "UF";
                    None
                }
            }
        }
        (tcp, _) => tcp.map(StreamUpstream::Plain),
    };
    // DestinationRule `tunnel`: the stream rides in a CONNECT through the endpoint (an HTTP
    // proxy), over whatever the connection to it is (plaintext or the mesh's mTLS).
    let tunnel = cluster.as_ref().and_then(|c| c.tunnel.clone());
    let upstream = match (upstream, tunnel) {
        (Some(mut up), Some(tunnel)) => {
            match crate::tunnel::open(&mut up, &tunnel.authority, connect_timeout).await {
                Ok(()) => Some(up),
                Err(e) => {
                    tracing::debug!(
                        "{cluster_name}: CONNECT {} through the endpoint failed: {e:?}",
                        tunnel.authority
                    );
                    rec.upstream_local_address = up.tcp().local_addr().ok();
                    rec.upstream_transport_failure_reason = Some(Cow::Owned(e.reason()));
                    flags = "UF";
                    None
                }
            }
        }
        (up, _) => up,
    };
    let Some(mut upstream) = upstream else {
        let mut labels = tcp_labels(&proxy, service, flags);
        apply_side_labels(&mut labels, &security);
        proxy.metrics.tcp_opened(&labels);
        proxy.metrics.tcp_closed(&labels, 0, 0);
        rec.response_flags = Cow::Borrowed(flags);
        rec.duration = start.elapsed();
        proxy.log_connection(rec, WorkloadMode::Client);
        return;
    };
    rec.upstream_local_address = upstream.tcp().local_addr().ok();
    let mut labels = tcp_labels(&proxy, service, "-");
    if let Some(addr) = rec.upstream_host {
        labels.destination = proxy.peer_at(&snap, addr.ip());
    }
    apply_side_labels(&mut labels, &security);
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
    proxy.log_connection(rec, WorkloadMode::Client);
}

/// Counts a refused connection in `sluice_egress_blocked_total`: TLS by its SNI (the
/// destination IP without one), TCP by destination IP.
pub fn count_blocked(proxy: &Proxy, conn: &StreamConn) {
    let ip;
    let (host, protocol) = match (conn.tls, conn.sni.as_deref(), conn.target.host.as_deref()) {
        (true, Some(sni), _) => (sni, BlockedProtocol::Tls),
        (tls, _, host) => {
            let protocol = if tls {
                BlockedProtocol::Tls
            } else {
                BlockedProtocol::Tcp
            };
            // A CONNECT tunnel names its host; a captured connection only has the IP.
            match host {
                Some(h) => (h, protocol),
                None => {
                    ip = conn.target.addr.ip().to_string();
                    (ip.as_str(), protocol)
                }
            }
        }
    };
    proxy.metrics.record_blocked(
        &proxy.workload.workload,
        host,
        conn.target.addr.port(),
        protocol,
    );
}

/// The ISTIO_MUTUAL server's expected identity as `destination_principal`. The source stays
/// this proxy's own workload with `connection_security_policy="unknown"` even on a gateway that
/// terminated its caller's mesh mTLS: Istio's gateways report as the source, and the caller's
/// identity is in the access log (%DOWNSTREAM_PEER_URI_SAN%).
fn apply_side_labels(labels: &mut TcpLabels, security: &UpstreamSecurity) {
    if let Some(p) = security.expected_principal() {
        labels.destination = with_principal(&labels.destination, p);
    }
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
