//! Clusters (`outbound|port|subset|host`): a service port, optionally narrowed to a subset, with the
//! DestinationRule policy that applies to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_api::networking::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, TrafficPolicy,
};

use crate::policy::{H2UpgradePolicy, LbPolicy, OutlierPolicy, PoolLimits};
use crate::registry::{Endpoint, EndpointAddress, Protocol, Resolution, Service, ServicePort};
use crate::snapshot::ProxyKind;

/// Name of the cluster that forwards unknown destinations to their original address.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Name of the cluster with no endpoints used for blocked destinations.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// TLS the proxy originates towards the upstream (DestinationRule `tls`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpstreamTls {
    pub mutual: bool,
    /// SNI to send; `None` = the request's Host (Envoy auto SNI), else the service host.
    pub sni: Option<String>,
    pub ca_certificates: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub subject_alt_names: Vec<String>,
    /// `ISTIO_MUTUAL` (set explicitly or chosen by auto-mTLS): present this proxy's mesh
    /// certificate and verify the peer against the mesh root; `subject_alt_names` then holds the
    /// expected SPIFFE identities (`spiffe://cluster.local/ns/NS/sa/SA`).
    pub istio_mutual: bool,
}

impl UpstreamTls {
    /// TLS origination from `ClientTLSSettings`; `None` for DISABLE or an unset mode.
    ///
    /// For ISTIO_MUTUAL only `sni` and `subjectAltNames` count (Istio ignores the certificate
    /// fields: the proxy's mesh certificate is used); the snapshot adds the SPIFFE identities of
    /// the cluster's endpoints when the DestinationRule names no `subjectAltNames`.
    pub fn from_settings(tls: &ClientTlsSettings) -> Option<UpstreamTls> {
        let mode = tls
            .mode
            .as_deref()
            .unwrap_or("DISABLE")
            .to_ascii_uppercase();
        let mutual = match mode.as_str() {
            "SIMPLE" => false,
            "MUTUAL" => true,
            "ISTIO_MUTUAL" => {
                let mut t = UpstreamTls::istio_mutual(tls.subject_alt_names.clone());
                // Istio uses a `sni` the user gave (routing through a gateway needs it).
                t.sni = tls.sni.clone().filter(|s| !s.is_empty());
                return Some(t);
            }
            _ => return None,
        };
        Some(UpstreamTls {
            mutual,
            sni: tls.sni.clone().filter(|s| !s.is_empty()),
            ca_certificates: tls.ca_certificates.as_ref().map(PathBuf::from),
            client_certificate: tls.client_certificate.as_ref().map(PathBuf::from),
            private_key: tls.private_key.as_ref().map(PathBuf::from),
            insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
            subject_alt_names: tls.subject_alt_names.clone(),
            istio_mutual: false,
        })
    }

    /// ISTIO_MUTUAL towards peers with these identities (`spiffe://…` or other SANs). With
    /// `sni: None` the SNI is Istio's `outbound_.PORT_.SUBSET_.HOST`, which the proxy derives
    /// from the cluster.
    pub fn istio_mutual(subject_alt_names: Vec<String>) -> UpstreamTls {
        UpstreamTls {
            mutual: true,
            sni: None,
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: false,
            subject_alt_names,
            istio_mutual: true,
        }
    }
}

/// An upstream cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// `outbound|80||httpbin.org`.
    pub name: Arc<str>,
    #[serde(skip)]
    pub service: Arc<Service>,
    pub port: ServicePort,
    pub subset: Option<Arc<str>>,
    /// The service's endpoints, narrowed to the subset's labels.
    pub endpoints: Arc<[Endpoint]>,
    pub tls: Option<Arc<UpstreamTls>>,
    pub connect_timeout: Duration,
    /// `loadBalancer` for this cluster.
    pub lb: LbPolicy,
    /// `connectionPool` limits (circuit breakers); `limits.connect_timeout` == `connect_timeout`.
    pub limits: PoolLimits,
    /// `outlierDetection`; `None` when the DestinationRule does not enable it.
    pub outlier: Option<OutlierPolicy>,
    /// Locality failover: the priority of each of `endpoints` (0 = preferred; see
    /// [`crate::policy::locality_plan`]). `None` = every endpoint has priority 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priorities: Option<Arc<[u32]>>,
    /// `DestinationRule ns/name` that set the policy, for explanations.
    pub policy_source: Option<Arc<str>>,
    /// The HTTP version requests to this cluster's endpoints are sent in.
    pub upstream_protocol: UpstreamProtocol,
    /// DestinationRule `tunnel`: TCP and TLS streams to this cluster's endpoints are carried in
    /// an HTTP/1.1 CONNECT to this target (Envoy's `tcp_proxy` `tunneling_config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Arc<Tunnel>>,
}

/// Where a tunnelled stream goes: the `host:port` of the CONNECT request (Istio joins
/// `targetHost` and `targetPort` as Go's `net.JoinHostPort`, so an IPv6 host is bracketed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    pub authority: String,
}

impl Tunnel {
    pub fn from_settings(t: &sluice_api::networking::TunnelSettings) -> Tunnel {
        let host = t.target_host.as_str();
        let authority = if host.contains(':') {
            format!("[{host}]:{}", t.target_port)
        } else {
            format!("{host}:{}", t.target_port)
        };
        Tunnel { authority }
    }
}

/// The HTTP version a proxy speaks to a cluster's endpoints (Envoy's cluster
/// `http_protocol_options`, as Istio's `setUpstreamProtocol`, `applyConnectionPool` and
/// `shouldH2Upgrade` choose it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2: cleartext with prior knowledge (h2c), or `h2` by ALPN over originated TLS.
    Http2,
    /// The downstream request's version (Envoy `use_downstream_protocol_config`).
    Downstream,
}

impl UpstreamProtocol {
    /// The protocol for a cluster of a service port declared `protocol`, with `limits` from its
    /// DestinationRule, in a proxy of `kind`:
    /// 1. `useClientProtocol: true` follows the client;
    /// 2. ports declared `http2` / `grpc` speak HTTP/2;
    /// 3. an undeclared (sniffed) port follows the client at sidecars; gateways do not sniff,
    ///    so they speak HTTP/1.1 there (Istio: clients negotiating h2 by ALPN would otherwise
    ///    reach upstreams that only know HTTP/1.1);
    /// 4. `h2UpgradePolicy: UPGRADE` upgrades the other HTTP ports (`grpc-web` included: it is
    ///    forwarded as is, so it stays HTTP/1.1 unless upgraded explicitly).
    pub fn for_port(protocol: Protocol, limits: &PoolLimits, kind: ProxyKind) -> UpstreamProtocol {
        if limits.use_client_protocol {
            return UpstreamProtocol::Downstream;
        }
        match protocol {
            Protocol::Http2 | Protocol::Grpc => UpstreamProtocol::Http2,
            Protocol::Unknown if kind == ProxyKind::Sidecar => UpstreamProtocol::Downstream,
            p if p.is_http() && limits.h2_upgrade_policy == H2UpgradePolicy::Upgrade => {
                UpstreamProtocol::Http2
            }
            _ => UpstreamProtocol::Http1,
        }
    }

    /// True when a request that arrived as HTTP/2 (`downstream_http2`) or HTTP/1.x goes
    /// upstream as HTTP/2.
    pub fn is_http2(self, downstream_http2: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => downstream_http2,
        }
    }
}

/// How to reach a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddress {
    /// Connect to where the client was going (`resolution: NONE`).
    OriginalDestination,
    /// These endpoints; names are resolved by DNS at connect time.
    Endpoints(Vec<(EndpointAddress, u16, u32)>),
}

impl Cluster {
    /// The SNI Istio sends when it originates TLS to this cluster, `None` for plaintext. A
    /// DestinationRule `sni` wins; otherwise ISTIO_MUTUAL sends Istio's
    /// `outbound_.<port>_.<subset>_.<host>` (the server side logs it in
    /// `%REQUESTED_SERVER_NAME%`), and SIMPLE/MUTUAL the request's host (`authority` without its
    /// port: Envoy's auto SNI; TCP/TLS streams pass the service host).
    pub fn upstream_sni<'a>(&'a self, authority: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        let tls = self.tls.as_ref()?;
        Some(match (&tls.sni, tls.istio_mutual) {
            (Some(sni), _) => sni.as_str().into(),
            (None, true) => format!(
                "outbound_.{}_.{}_.{}",
                self.port.number,
                self.subset.as_deref().unwrap_or(""),
                self.service.hostname
            )
            .into(),
            (None, false) => crate::host::strip_port(authority).into(),
        })
    }

    /// The port an original-destination cluster (resolution NONE, a wildcard or DYNAMIC_DNS
    /// host) connects to. A sidecar keeps the address the client called, on the service port: a
    /// virtual host spans every port, so a route whose destination names no port sends a call
    /// made on :80 to the service's only port (seed 004's ServiceEntry on 81 breaks the call
    /// exactly this way). A gateway has no original destination: it connects where the
    /// request's host resolves, on the service port's `targetPort` (Envoy's dynamic forward
    /// proxy).
    pub fn original_destination_port(&self, kind: ProxyKind) -> u16 {
        match kind {
            ProxyKind::Sidecar => self.port.number,
            ProxyKind::Gateway => self.port.target_port.unwrap_or(self.port.number),
        }
    }

    /// Istio's cluster name.
    pub fn name_for(port: u16, subset: Option<&str>, host: &str) -> String {
        format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
    }

    /// The port to connect to on an endpoint: the endpoint's own port for this port name, else
    /// the service's `targetPort`, else the service port.
    pub fn endpoint_port(&self, ep: &Endpoint) -> u16 {
        ep.ports
            .get(self.port.name.as_ref())
            .copied()
            .or(self.port.target_port)
            .unwrap_or(self.port.number)
    }

    /// The locality priority of the `i`th entry of [`Cluster::upstream`] (0 when none is set).
    pub fn endpoint_priority(&self, i: usize) -> u32 {
        self.priorities
            .as_ref()
            .and_then(|p| p.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Where connections for this cluster go.
    pub fn upstream(&self) -> UpstreamAddress {
        let target = self.port.target_port.unwrap_or(self.port.number);
        match self.service.resolution {
            Resolution::None => UpstreamAddress::OriginalDestination,
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
                if !self.endpoints.is_empty() || self.subset.is_some() =>
            {
                let mut eps: Vec<_> = self
                    .endpoints
                    .iter()
                    .map(|ep| (ep.address.clone(), self.endpoint_port(ep), ep.weight))
                    .collect();
                if self.service.resolution == Resolution::DnsRoundRobin {
                    eps.truncate(1);
                }
                UpstreamAddress::Endpoints(eps)
            }
            Resolution::Static => UpstreamAddress::Endpoints(Vec::new()),
            // DNS without endpoints resolves the host itself; a wildcard host cannot be resolved
            // and behaves like DYNAMIC_DNS (the request's own host is used by the proxy).
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                if self.service.hostname.starts_with('*') {
                    UpstreamAddress::OriginalDestination
                } else {
                    UpstreamAddress::Endpoints(vec![(
                        EndpointAddress::Name(self.service.hostname.clone()),
                        target,
                        1,
                    )])
                }
            }
        }
    }
}

/// The DestinationRules that apply to one host, merged as Istio does: the first definition of a
/// subset wins and the first top-level traffic policy wins (oldest first).
#[derive(Debug, Clone, Default)]
pub struct MergedRule<'a> {
    pub sources: Vec<String>,
    pub traffic_policy: Option<&'a TrafficPolicy>,
    pub subsets: Vec<&'a sluice_api::networking::Subset>,
    /// Subset names already taken (a DestinationRule may list thousands of subsets; finding each
    /// by a scan made merging and every cluster's policy quadratic).
    subset_index: HashMap<&'a str, usize>,
    /// The first `portLevelSettings` entry of each traffic policy for each port, keyed by the
    /// policy's address.
    port_levels: HashMap<(usize, u32), &'a PortTrafficPolicy>,
}

impl<'a> MergedRule<'a> {
    /// Adds one DestinationRule (call oldest first).
    pub fn merge(&mut self, source: String, dr: &'a DestinationRule) {
        self.sources.push(source);
        if self.traffic_policy.is_none() {
            self.traffic_policy = dr.traffic_policy.as_ref();
            if let Some(tp) = self.traffic_policy {
                self.index_port_levels(tp);
            }
        }
        for s in &dr.subsets {
            if !self.subset_index.contains_key(s.name.as_str()) {
                self.subset_index.insert(&s.name, self.subsets.len());
                self.subsets.push(s);
                if let Some(tp) = &s.traffic_policy {
                    self.index_port_levels(tp);
                }
            }
        }
    }

    fn index_port_levels(&mut self, tp: &'a TrafficPolicy) {
        let key = std::ptr::from_ref(tp) as usize;
        for pl in &tp.port_level_settings {
            if let Some(port) = &pl.port {
                self.port_levels.entry((key, port.number)).or_insert(pl);
            }
        }
    }

    /// The subset named `name`, if one was merged.
    pub fn subset(&self, name: &str) -> Option<&'a sluice_api::networking::Subset> {
        self.subset_index.get(name).map(|&i| self.subsets[i])
    }

    /// The policy components for `port` of subset `subset` (`None` = the default cluster), as
    /// Istio's `MergeSubsetTrafficPolicy`: a `portLevelSettings` entry for the port replaces all
    /// four components of the policy it sits in (unset ones fall back to defaults, not to the
    /// enclosing policy); then each component the subset's policy sets replaces the top-level one,
    /// and a subset port-level entry replaces all four.
    pub fn policy_for(&self, port: u16, subset: Option<&str>) -> PolicyComponents<'a> {
        self.policy_for_subset(port, subset.and_then(|name| self.subset(name)))
    }

    /// [`MergedRule::policy_for`] for a subset already looked up.
    pub fn policy_for_subset(
        &self,
        port: u16,
        subset: Option<&'a sluice_api::networking::Subset>,
    ) -> PolicyComponents<'a> {
        let of = |p: &'a TrafficPolicy| {
            let key = std::ptr::from_ref(p) as usize;
            PolicyComponents::of(p, self.port_levels.get(&(key, u32::from(port))).copied())
        };
        let top = self.traffic_policy.map(|p| of(p).0).unwrap_or_default();
        let subset_policy = subset.and_then(|s| s.traffic_policy.as_ref());
        let Some(sp) = subset_policy else {
            return top;
        };
        let (sub, port_level) = of(sp);
        PolicyComponents {
            load_balancer: if port_level || sub.load_balancer.is_some() {
                sub.load_balancer
            } else {
                top.load_balancer
            },
            connection_pool: if port_level || sub.connection_pool.is_some() {
                sub.connection_pool
            } else {
                top.connection_pool
            },
            outlier_detection: if port_level || sub.outlier_detection.is_some() {
                sub.outlier_detection
            } else {
                top.outlier_detection
            },
            tls: if port_level || sub.tls.is_some() {
                sub.tls
            } else {
                top.tls
            },
        }
    }

    /// The `tunnel` of a cluster: the subset's own for a subset cluster (no fallback to the top
    /// level), else the top-level one; port-level settings have none. This is Istio's
    /// `tunnelingconfig.Apply`. (Istio also ignores a subset's tunnel on weighted TCP routes,
    /// whose tunnel is set on the listener; sluice keeps it per cluster.)
    pub fn tunnel_for_subset(
        &self,
        subset: Option<&'a sluice_api::networking::Subset>,
    ) -> Option<&'a sluice_api::networking::TunnelSettings> {
        match subset {
            Some(s) => s.traffic_policy.as_ref()?.tunnel.as_ref(),
            None => self.traffic_policy?.tunnel.as_ref(),
        }
    }

    /// The TLS settings for `port` of subset `subset` (see [`MergedRule::policy_for`]).
    pub fn tls_for(&self, port: u16, subset: Option<&str>) -> Option<&'a ClientTlsSettings> {
        self.policy_for(port, subset).tls
    }
}

/// The four components of a traffic policy that apply to one cluster, after merging.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyComponents<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> PolicyComponents<'a> {
    /// The components of `p`, or of its port-level entry for the port when it has one, and
    /// whether a port-level entry supplied them.
    fn of(
        p: &'a TrafficPolicy,
        port_level: Option<&'a PortTrafficPolicy>,
    ) -> (PolicyComponents<'a>, bool) {
        match port_level {
            Some(pl) => (
                PolicyComponents {
                    load_balancer: pl.load_balancer.as_ref(),
                    connection_pool: pl.connection_pool.as_ref(),
                    outlier_detection: pl.outlier_detection.as_ref(),
                    tls: pl.tls.as_ref(),
                },
                true,
            ),
            None => (
                PolicyComponents {
                    load_balancer: p.load_balancer.as_ref(),
                    connection_pool: p.connection_pool.as_ref(),
                    outlier_detection: p.outlier_detection.as_ref(),
                    tls: p.tls.as_ref(),
                },
                false,
            ),
        }
    }
}
