//! The lookups the data path and `explain` make against a snapshot: routing HTTP requests and
//! TLS/TCP connections (sidecar and gateway), inbound ports and peers.

use super::*;

impl Snapshot {
    /// The most specific virtual host for `host` (lowercase, no port).
    fn vhost_for(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.vhosts_exact.get(host).or_else(|| {
            self.vhosts_wildcard
                .iter()
                .find(|v| host::matches(&v.domain, host))
        })
    }

    /// The FQDN a Host header names: itself when it is a known host, else the service or virtual
    /// host it is a short name or VIP of (`reviews` from the proxy's namespace, `reviews.ns`,
    /// `reviews.ns.svc`, `10.96.0.12`), else itself. No allocation.
    pub fn canonical_host<'s>(&'s self, host: &'s str) -> &'s str {
        if self.vhosts_exact.contains_key(host) || self.services_exact.contains_key(host) {
            return host;
        }
        self.host_aliases.get(host).map_or(host, |fqdn| fqdn)
    }

    /// The most specific service for `host` that declares `port`.
    pub fn service_for(&self, host: &str, port: u16) -> Option<(usize, &Arc<Service>)> {
        let exact = self
            .services_exact
            .get(host)
            .into_iter()
            .flatten()
            .find(|i| self.services[**i].port(port).is_some());
        let idx = exact.or_else(|| {
            self.services_wildcard.iter().find(|i| {
                let s = &self.services[**i];
                host::matches(&s.hostname, host) && s.port(port).is_some()
            })
        })?;
        Some((*idx, &self.services[*idx]))
    }

    /// Routes an HTTP request by Host/:authority (port ignored) and the port the client addressed.
    pub fn route_http<'a>(&'a self, req: &HttpRequestFacts<'_>) -> HttpDecision<'a> {
        let raw = host::strip_port(req.authority);
        let lowered;
        let host = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = raw.to_ascii_lowercase();
            lowered.as_str()
        } else {
            raw
        };
        let host = self.canonical_host(host);
        let vhost = self.vhost_for(host);
        let service = self.service_for(host, req.port);
        // Envoy picks the most specific domain; a VirtualService wins a tie with its service.
        let use_vhost = match (vhost, service) {
            (Some(v), Some((_, s))) => {
                host::specificity(&v.domain, &s.hostname) != std::cmp::Ordering::Greater
            }
            (Some(_), None) => true,
            _ => false,
        };
        if let (true, Some(v)) = (use_vhost, vhost) {
            for rule in &v.rules {
                if let Some(i) = rule.matched(req) {
                    return HttpDecision::Route {
                        rule,
                        matched: rule.matches.get(i),
                        vhost: &v.domain,
                    };
                }
            }
            return HttpDecision::NoRoute { vhost: &v.domain };
        }
        if let Some((i, s)) = service {
            if let Some(rule) = self.default_routes.get(&(i, req.port)) {
                return HttpDecision::Route {
                    rule,
                    matched: None,
                    vhost: &s.hostname,
                };
            }
        }
        self.unknown_http()
    }

    fn unknown_http(&self) -> HttpDecision<'_> {
        match self.mesh.outbound_policy {
            OutboundPolicy::AllowAny => HttpDecision::Passthrough,
            OutboundPolicy::RegistryOnly => HttpDecision::Blocked,
        }
    }

    fn unknown_stream(&self) -> StreamDecision<'_> {
        match self.mesh.outbound_policy {
            OutboundPolicy::AllowAny => StreamDecision::Passthrough,
            OutboundPolicy::RegistryOnly => StreamDecision::Blocked,
        }
    }

    fn cluster_of(&self, svc: &Service, port: u16) -> Option<&Arc<Cluster>> {
        self.clusters
            .get(Cluster::name_for(port, None, &svc.hostname).as_str())
    }

    /// A service whose `addresses` contain `ip` and that declares `port`.
    fn service_by_address(&self, ip: IpAddr, port: u16) -> Option<&Arc<Service>> {
        self.services
            .iter()
            .find(|s| s.has_address(ip) && s.port(port).is_some())
    }

    /// Routes a TLS connection by SNI (when the client sent one) and destination.
    pub fn route_tls(&self, sni: Option<&str>, dst: SocketAddr) -> StreamDecision<'_> {
        let sni = sni.map(str::to_ascii_lowercase);
        if let Some(sni) = sni.as_deref() {
            for rule in &self.tls_rules {
                let hit = rule.matches.iter().any(|m| {
                    m.sni_hosts.iter().any(|p| host::matches(p, sni))
                        && m.port.is_none_or(|p| p == dst.port())
                        && (m.destination_subnets.is_empty()
                            || m.destination_subnets.iter().any(|n| n.contains(&dst.ip())))
                });
                if hit {
                    return StreamDecision::Rule(rule);
                }
            }
            if let Some((_, svc)) = self.service_for(sni, dst.port()) {
                let declared = svc.port(dst.port()).map(|p| p.protocol);
                if !declared.is_some_and(Protocol::is_http) {
                    if let Some(c) = self.cluster_of(svc, dst.port()) {
                        return StreamDecision::Cluster(c);
                    }
                }
            }
        }
        if let Some(svc) = self.service_by_address(dst.ip(), dst.port()) {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        self.unknown_stream()
    }

    /// Routes an opaque TCP connection by destination address and port.
    pub fn route_tcp(&self, dst: SocketAddr) -> StreamDecision<'_> {
        for rule in &self.tcp_rules {
            let owns = rule.vs_hosts.iter().any(|h| {
                self.services.iter().any(|s| {
                    host::matches(h, &s.hostname)
                        && s.port(dst.port()).is_some()
                        && (s.addresses.is_empty() || s.has_address(dst.ip()))
                })
            });
            let hit = owns
                && rule.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == dst.port())
                        && (m.destination_subnets.is_empty()
                            || m.destination_subnets.iter().any(|n| n.contains(&dst.ip())))
                });
            if hit {
                return StreamDecision::Rule(rule);
            }
        }
        if let Some(svc) = self.service_by_address(dst.ip(), dst.port()) {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        // A service without addresses owns its TCP port on every IP (Istio's 0.0.0.0:port listener).
        let by_port = self.services.iter().find(|s| {
            s.addresses.is_empty()
                && s.port(dst.port()).is_some_and(|p| {
                    !p.protocol.is_http() && !p.protocol.is_tls() && p.protocol != Protocol::Unknown
                })
        });
        if let Some(svc) = by_port {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        self.unknown_stream()
    }

    /// The protocol declared for a destination, when declaration (not sniffing) decides it: a
    /// service that owns the address, or services without addresses that all declare the port as
    /// opaque TCP. Server-first protocols need this, since they send nothing to sniff.
    pub fn declared_protocol(&self, dst: SocketAddr) -> Option<Protocol> {
        if let Some(p) = self
            .service_by_address(dst.ip(), dst.port())
            .and_then(|s| s.port(dst.port()))
            .map(|p| p.protocol)
            .filter(|p| *p != Protocol::Unknown)
        {
            return Some(p);
        }
        let mut declared = self
            .services
            .iter()
            .filter(|s| s.addresses.is_empty())
            .filter_map(|s| s.port(dst.port()))
            .map(|p| p.protocol);
        let first = declared.next()?;
        let opaque = |p: Protocol| !p.is_http() && !p.is_tls() && p != Protocol::Unknown;
        (opaque(first) && declared.all(opaque)).then_some(Protocol::Tcp)
    }

    /// Gateway proxies: every port to listen on, with its servers.
    pub fn gateway_ports(&self) -> &[GatewayPort] {
        &self.gateway_ports
    }

    /// Gateway proxies: the server on `port` that handles a connection with this SNI (TLS): the
    /// server with the most specific host matching it; without SNI or without a match, the first
    /// server with host `*`, else the port's only server; `None` when the port has several
    /// servers and none fits (the handshake is refused).
    pub fn gateway_server(&self, port: u16, sni: Option<&str>) -> Option<&Arc<GatewayServer>> {
        let p = self.gateway_ports.iter().find(|p| p.number == port)?;
        if let Some(sni) = sni.filter(|s| !s.is_empty()) {
            if let Some(s) = p.server_for_host(&sni.to_ascii_lowercase()) {
                return Some(s);
            }
        }
        p.servers
            .iter()
            .find(|s| s.hosts.iter().any(|h| &*h.host == "*"))
            .or_else(|| (p.servers.len() == 1).then(|| &p.servers[0]))
    }

    /// Gateway proxies: true if a plain HTTP request for `authority` on `port` must be answered
    /// with a 301 to https (`tls.httpsRedirect` on the server whose hosts cover it best; a host
    /// no server covers is not redirected). The gateway's data path and `explain` both ask this.
    pub fn gateway_https_redirect(&self, port: u16, authority: &str) -> bool {
        let host = host::strip_port(authority).to_ascii_lowercase();
        self.gateway_ports
            .iter()
            .find(|p| p.number == port)
            .is_some_and(|p| p.requires_https_redirect(&host))
    }

    /// Gateway proxies: routes an HTTP request that arrived on `port` (Host port ignored). Never
    /// Passthrough/Blocked: an unknown host or unmatched path is `NoRoute` (404 NR).
    pub fn route_gateway_http<'a>(
        &'a self,
        port: u16,
        req: &HttpRequestFacts<'_>,
    ) -> HttpDecision<'a> {
        let Some(routes) = self.gateway_routes.get(&port) else {
            return HttpDecision::NoRoute { vhost: "blackhole" };
        };
        let raw = host::strip_port(req.authority);
        let lowered;
        let host = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = raw.to_ascii_lowercase();
            lowered.as_str()
        } else {
            raw
        };
        let Some(v) = routes.vhost_for(host) else {
            return HttpDecision::NoRoute {
                vhost: &routes.blackhole,
            };
        };
        for rule in &v.rules {
            if let Some(i) = rule.matched(req) {
                return HttpDecision::Route {
                    rule,
                    matched: rule.matches.get(i),
                    vhost: &v.domain,
                };
            }
        }
        HttpDecision::NoRoute { vhost: &v.domain }
    }

    /// Gateway proxies: the virtual hosts of `port`, most specific first, for the config dump.
    pub fn gateway_virtual_hosts(&self, port: u16) -> Vec<&Arc<VirtualHost>> {
        let Some(routes) = self.gateway_routes.get(&port) else {
            return Vec::new();
        };
        let mut v: Vec<&Arc<VirtualHost>> = routes.vhosts_exact.values().collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v.extend(routes.vhosts_wildcard.iter());
        v
    }

    /// Gateway proxies: routes a PASSTHROUGH TLS connection on `port` by SNI with VirtualService
    /// `tls` routes bound to the gateway; `Blocked` when nothing matches.
    pub fn route_gateway_tls(&self, port: u16, sni: Option<&str>) -> StreamDecision<'_> {
        let (Some(routes), Some(sni)) = (self.gateway_routes.get(&port), sni) else {
            return StreamDecision::Blocked;
        };
        let sni = sni.to_ascii_lowercase();
        let served = self
            .gateway_ports
            .iter()
            .filter(|p| p.number == port)
            .flat_map(|p| p.servers.iter())
            .any(|s| s.passes_tls_through() && s.covers_host(&sni));
        if !served {
            return StreamDecision::Blocked;
        }
        routes
            .tls_rules
            .iter()
            .find(|rule| {
                rule.matches.iter().any(|m| {
                    m.sni_hosts.iter().any(|p| host::matches(p, &sni))
                        && m.port.is_none_or(|p| p == port)
                })
            })
            .map_or(StreamDecision::Blocked, StreamDecision::Rule)
    }

    /// Gateway proxies: routes a TCP connection on `port` with VirtualService `tcp` routes bound
    /// to the gateway; `Blocked` when nothing matches.
    pub fn route_gateway_tcp(&self, port: u16) -> StreamDecision<'_> {
        self.gateway_routes
            .get(&port)
            .and_then(|routes| {
                routes.tcp_rules.iter().find(|rule| {
                    rule.matches
                        .iter()
                        .any(|m| m.port.is_none_or(|p| p == port))
                })
            })
            .map_or(StreamDecision::Blocked, StreamDecision::Rule)
    }

    /// The inbound mutual-TLS mode for the workload's `port` (PeerAuthentication).
    pub fn inbound_mtls(&self, port: u16) -> crate::security::MtlsMode {
        self.mtls_ports
            .get(&port)
            .copied()
            .unwrap_or(self.mtls_mode)
    }

    /// The workload at `ip`, if the registry knows one.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    /// How inbound traffic to `port` (the workload's own port) is handled.
    pub fn inbound_port(&self, port: u16) -> InboundPort {
        self.inbound_ports
            .get(&port)
            .cloned()
            .unwrap_or_else(|| InboundPort {
                cluster_name: Arc::from(INBOUND_PASSTHROUGH_CLUSTER),
                protocol: Protocol::Unknown,
                service: None,
                endpoint: Default::default(),
            })
    }

    /// Sidecar proxies: the snapshot that routes outbound traffic to `dst` (the egress
    /// listener of its port when the Sidecar splits egress by port), else this one.
    pub fn outbound_scope(&self, dst: SocketAddr) -> Option<&Arc<Snapshot>> {
        self.sidecar_listeners.outbound_scope(dst)
    }

    /// Sidecar proxies: a TCP/TLS connection on a bound egress listener of `port` (the client
    /// connected to the listener itself, so there is no destination address to route by). TLS
    /// by SNI first; else, as Istio's listener whose services all have the same (empty) filter
    /// chain match, the oldest imported service declaring the port (Istio keeps the first
    /// chain and drops the others as conflicts), or a TCP route of a VirtualService for it.
    pub fn route_bound_stream(&self, sni: Option<&str>, port: u16) -> StreamDecision<'_> {
        let unspecified = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
        if sni.is_some() {
            if let d @ (StreamDecision::Rule(_) | StreamDecision::Cluster(_)) =
                self.route_tls(sni, unspecified)
            {
                return d;
            }
        }
        let Some(svc) = self.services.iter().find(|s| s.port(port).is_some()) else {
            return self.unknown_stream();
        };
        let rule = self.tcp_rules.iter().find(|rule| {
            rule.vs_hosts
                .iter()
                .any(|h| host::matches(h, &svc.hostname))
                && rule
                    .matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == port))
        });
        if let Some(rule) = rule {
            return StreamDecision::Rule(rule);
        }
        self.cluster_of(svc, port)
            .map_or_else(|| self.unknown_stream(), StreamDecision::Cluster)
    }

    /// All virtual hosts, for the config dump.
    pub fn virtual_hosts(&self) -> impl Iterator<Item = &Arc<VirtualHost>> {
        self.vhosts_exact
            .values()
            .chain(self.vhosts_wildcard.iter())
    }

    /// Counts resources compiled in, for logs.
    pub fn summary(&self) -> String {
        if self.proxy.kind == ProxyKind::Gateway {
            let ports: Vec<String> = self
                .gateway_ports
                .iter()
                .map(|p| {
                    let vhosts = self
                        .gateway_routes
                        .get(&p.number)
                        .map_or(0, |r| r.vhosts_exact.len() + r.vhosts_wildcard.len());
                    format!(
                        "{} ({} servers, {vhosts} virtual hosts)",
                        p.number,
                        p.servers.len()
                    )
                })
                .collect();
            return format!(
                "{} services, {} clusters, gateway ports: {}",
                self.services.len(),
                self.clusters.len(),
                if ports.is_empty() {
                    "none (no Gateway selects this proxy's labels)".to_string()
                } else {
                    ports.join(", ")
                }
            );
        }
        format!(
            "{} services, {} clusters, {} virtual hosts, {} tls rules, {} tcp rules, outbound policy {:?}{}",
            self.services.len(),
            self.clusters.len(),
            self.vhosts_exact.len() + self.vhosts_wildcard.len(),
            self.tls_rules.len(),
            self.tcp_rules.len(),
            self.mesh.outbound_policy,
            self.sidecar_scope
                .as_ref()
                .map_or(String::new(), |sc| format!(", scoped by {}", sc.source))
        )
    }
}
