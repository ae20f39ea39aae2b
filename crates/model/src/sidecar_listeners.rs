//! The listeners a `Sidecar` resource declares (Istio's `IstioIngressListener` and the
//! `port`/`bind`/`captureMode` of `IstioEgressListener`), compiled into what the proxy serves.
//!
//! Ingress (`buildInboundChainConfigs`, `buildInboundClustersFromSidecar`):
//! - A Sidecar with ingress listeners replaces the workload's inbound ports: only the listed ports
//!   get an `inbound|PORT||` cluster with the listener's protocol; every other port is served as
//!   Istio serves an unknown port, by `InboundPassthroughClusterIpv4` (sniffed, to the original
//!   destination). This is Istio's default (`PILOT_ALLOW_SIDECAR_SERVICE_INBOUND_LISTENER_MERGE`
//!   off), odd as it is: a service port left out of `ingress` loses its service telemetry.
//! - `defaultEndpoint` is where the traffic goes: `127.0.0.1:P` / `[::1]:P` (loopback), `0.0.0.0:P`
//!   / `[::]:P` (the workload's own address, i.e. the original destination's IP, on P),
//!   `unix:///path`; unset means the original destination. `:P` (accepted by validation) matches
//!   none of Istio's cases, so it too means the original destination, port included.
//! - `captureMode: NONE` makes it a real listener on `bind` (default `0.0.0.0`) and port; captured
//!   traffic to that port then no longer reaches it (Istio builds such a listener outside
//!   `virtualInbound`), so it is passthrough.
//!
//! Egress (`buildSidecarOutboundListeners`):
//! - A listener with a port imports only services declaring that port and applies to outbound
//!   traffic to that port (to `bind:port` only when it has a `bind` IP); the listener without a
//!   port applies to every other port; without one, other ports import nothing.
//! - `captureMode: NONE` makes it a real listener on `bind` (default `127.0.0.1`) and port. The
//!   original destination of a connection to it is the listener itself, so traffic to a host it
//!   does not import is refused whatever the outbound policy (Envoy would pass it through to its
//!   own listener, a loop).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;
use sluice_api::Resource;

use crate::mesh::OutboundPolicy;
use crate::registry::Protocol;
use crate::snapshot::{InboundPort, ProxyIdentity, Snapshot};

/// Where inbound traffic to one port is delivered (`IstioIngressListener.defaultEndpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum InboundEndpoint {
    /// The original destination (`ORIGINAL_DST`): the workload's `ip:port` the client called.
    #[default]
    OriginalDestination,
    /// A loopback address and port (`127.0.0.1:P`, `[::1]:P`).
    Loopback(SocketAddr),
    /// The original destination's IP on another port (`0.0.0.0:P`, `[::]:P`: Istio's
    /// `INSTANCE_IP`, which is the address iptables captured the connection for).
    InstancePort(u16),
    /// A unix domain socket path (`unix:///var/run/app.sock`).
    Unix(Arc<str>),
}

impl InboundEndpoint {
    /// Parses `defaultEndpoint` as Istio's cluster builder does.
    pub fn parse(endpoint: Option<&str>) -> InboundEndpoint {
        let Some(ep) = endpoint.filter(|e| !e.is_empty()) else {
            return InboundEndpoint::OriginalDestination;
        };
        if let Some(path) = ep.strip_prefix("unix://") {
            return InboundEndpoint::Unix(Arc::from(path));
        }
        let Some((host, port)) = ep.rsplit_once(':') else {
            return InboundEndpoint::OriginalDestination;
        };
        let Ok(port) = port.parse::<u16>() else {
            return InboundEndpoint::OriginalDestination;
        };
        match host.trim_start_matches('[').trim_end_matches(']') {
            "127.0.0.1" => InboundEndpoint::Loopback(SocketAddr::from(([127, 0, 0, 1], port))),
            "::1" => InboundEndpoint::Loopback(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                port,
            )),
            "0.0.0.0" | "::" => InboundEndpoint::InstancePort(port),
            _ => InboundEndpoint::OriginalDestination,
        }
    }

    /// The TCP address for a connection whose original destination is `dst`; `None` for a
    /// unix socket.
    pub fn tcp_addr(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match self {
            InboundEndpoint::OriginalDestination => Some(dst),
            InboundEndpoint::Loopback(addr) => Some(*addr),
            InboundEndpoint::InstancePort(port) => Some(SocketAddr::new(dst.ip(), *port)),
            InboundEndpoint::Unix(_) => None,
        }
    }
}

/// A listener the sidecar opens itself (`captureMode: NONE`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BoundListener {
    pub direction: Direction,
    pub addr: SocketAddr,
}

/// Which side a bound listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl BoundListener {
    /// Envoy's listener name: `127.0.0.1_9080`.
    pub fn name(&self) -> String {
        format!("{}_{}", self.addr.ip(), self.addr.port())
    }
}

/// What the Sidecar's listeners add to a snapshot.
#[derive(Debug, Default)]
pub struct SidecarListeners {
    /// Bound ingress listeners: address → how its connections are handled.
    pub bound_ingress: BTreeMap<SocketAddr, InboundPort>,
    /// Bound egress listeners: address → its port's protocol and scoped snapshot.
    pub bound_egress: BTreeMap<SocketAddr, (Protocol, Arc<Snapshot>)>,
    /// Captured (or explicit-proxy) outbound traffic: per egress listener with a port, its bind
    /// IP (`None`: any) and scoped snapshot, first match wins.
    captured_egress: Vec<(Option<IpAddr>, u16, Arc<Snapshot>)>,
    /// Outbound traffic to every other port when the Sidecar has port listeners: the catch-all
    /// listener's scope (imports nothing without one).
    other_egress: Option<Arc<Snapshot>>,
}

impl SidecarListeners {
    /// The scoped snapshot for outbound traffic to `dst`, when the Sidecar splits its egress
    /// by port; `None`: the whole snapshot applies.
    pub fn outbound_scope(&self, dst: SocketAddr) -> Option<&Arc<Snapshot>> {
        let exact = self
            .captured_egress
            .iter()
            .find(|(ip, port, _)| *port == dst.port() && *ip == Some(dst.ip()));
        let any = || {
            self.captured_egress
                .iter()
                .find(|(ip, port, _)| *port == dst.port() && ip.is_none())
        };
        exact
            .or_else(any)
            .map(|(_, _, s)| s)
            .or(self.other_egress.as_ref())
    }

    /// Every listener to open, in a stable order.
    pub fn bound(&self) -> Vec<BoundListener> {
        let inbound = self.bound_ingress.keys().map(|a| BoundListener {
            direction: Direction::Inbound,
            addr: *a,
        });
        let outbound = self.bound_egress.keys().map(|a| BoundListener {
            direction: Direction::Outbound,
            addr: *a,
        });
        inbound.chain(outbound).collect()
    }
}

/// Parses a listener's `bind` as an IP (validation refused anything else but unix sockets).
fn bind_ip(bind: Option<&str>) -> Option<IpAddr> {
    bind.and_then(|b| b.trim_start_matches('[').trim_end_matches(']').parse().ok())
}

fn capture_none(mode: Option<&str>) -> bool {
    mode.is_some_and(|m| m.eq_ignore_ascii_case("NONE"))
}

/// Applies the Sidecar's listeners to `snap` (compiled with the whole Sidecar scope), compiling
/// one scoped snapshot per egress listener when they are split by port.
pub(crate) fn build(
    snap: &mut Snapshot,
    resources: &[Resource],
    proxy: &ProxyIdentity,
    generation: u64,
) {
    let Some(scope) = snap.sidecar_scope.clone() else {
        return;
    };
    apply_ingress(snap, &scope.ingress);

    let has_port_listener = scope.egress.iter().any(|l| l.port.is_some());
    if !has_port_listener {
        return;
    }
    let mut out = std::mem::take(&mut snap.sidecar_listeners);
    let mut catch_all = None;
    for (i, l) in scope.egress.iter().enumerate() {
        let Some(port) = l.port.as_ref() else {
            catch_all = Some(i);
            continue;
        };
        let Ok(number) = u16::try_from(port.number) else {
            continue;
        };
        // Port 0 is a unix socket listener, which sluice does not open (validation says so).
        if number == 0 || l.bind.as_deref().is_some_and(|b| b.starts_with("unix://")) {
            continue;
        }
        let mut scoped = crate::snapshot::compile_scoped(
            resources,
            proxy,
            generation,
            scope.only_listener(Some(i)),
        );
        let bind = bind_ip(l.bind.as_deref());
        if capture_none(l.capture_mode.as_deref()) {
            // The original destination is this listener: never pass through (a loop).
            scoped.mesh.outbound_policy = OutboundPolicy::RegistryOnly;
            let ip = bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
            out.bound_egress
                .insert(SocketAddr::new(ip, number), (protocol, Arc::new(scoped)));
        } else {
            out.captured_egress.push((bind, number, Arc::new(scoped)));
        }
    }
    out.other_egress = Some(Arc::new(crate::snapshot::compile_scoped(
        resources,
        proxy,
        generation,
        scope.only_listener(catch_all),
    )));
    snap.sidecar_listeners = out;
}

/// Replaces the workload's inbound ports with the ingress listeners' (see the module comment).
fn apply_ingress(snap: &mut Snapshot, ingress: &[sluice_api::networking::IstioIngressListener]) {
    if ingress.is_empty() {
        return;
    }
    let declared = std::mem::take(&mut snap.inbound_ports);
    for l in ingress {
        let Some(port) = l.port.as_ref() else {
            continue;
        };
        let Ok(number) = u16::try_from(port.number) else {
            continue;
        };
        let inbound = InboundPort {
            cluster_name: format!("inbound|{number}||").into(),
            protocol: Protocol::parse(port.protocol.as_deref().unwrap_or("")),
            // Istio's `findOrCreateService`: the service whose target port this is, for
            // telemetry.
            service: declared.get(&number).and_then(|p| p.service.clone()),
            endpoint: InboundEndpoint::parse(l.default_endpoint.as_deref()),
        };
        if capture_none(l.capture_mode.as_deref()) {
            let ip = bind_ip(l.bind.as_deref()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            snap.sidecar_listeners
                .bound_ingress
                .entry(SocketAddr::new(ip, number))
                .or_insert(inbound);
        } else {
            snap.inbound_ports.entry(number).or_insert(inbound);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints_parse_as_istio_reads_them() {
        let dst: SocketAddr = "10.0.0.5:9080".parse().unwrap();
        let cases = [
            (None, Some("10.0.0.5:9080")),
            (Some(""), Some("10.0.0.5:9080")),
            (Some("127.0.0.1:8080"), Some("127.0.0.1:8080")),
            (Some("[::1]:8080"), Some("[::1]:8080")),
            (Some("0.0.0.0:8080"), Some("10.0.0.5:8080")),
            (Some("[::]:8080"), Some("10.0.0.5:8080")),
            // Istio matches none of its cases for an empty host: the original destination.
            (Some(":8080"), Some("10.0.0.5:9080")),
            (Some("unix:///var/run/app.sock"), None),
        ];
        for (ep, want) in cases {
            let parsed = InboundEndpoint::parse(ep);
            assert_eq!(
                parsed.tcp_addr(dst).map(|a| a.to_string()).as_deref(),
                want,
                "{ep:?}"
            );
        }
        assert_eq!(
            InboundEndpoint::parse(Some("unix:///var/run/app.sock")),
            InboundEndpoint::Unix(Arc::from("/var/run/app.sock"))
        );
    }
}
