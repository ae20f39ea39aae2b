//! What the admin API shows of the proxy's state: clusters and routes in `/config_dump`,
//! listeners, and the mesh certificate in `/certs`.

use crate::identity::{describe_der, Identity};
use crate::telemetry::accesslog::format_start_time;

/// A cluster as `/config_dump` shows it: its model fields plus what `sluice proxy-config cluster`
/// prints (`service` FQDN, `direction`, Envoy cluster `type`).
pub fn cluster_config(c: &sluice_model::Cluster) -> serde_json::Value {
    use sluice_model::registry::Resolution;
    let mut v = serde_json::to_value(c).unwrap_or_else(|_| serde_json::json!({}));
    let ty = match c.service.resolution {
        Resolution::Static => "EDS",
        Resolution::Dns => "STRICT_DNS",
        Resolution::DnsRoundRobin => "LOGICAL_DNS",
        Resolution::None => "ORIGINAL_DST",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("service".into(), c.service.hostname.as_ref().into());
        obj.insert("direction".into(), "outbound".into());
        obj.insert("type".into(), ty.into());
    }
    v
}

/// The request matches of a route rule in `istioctl proxy-config route` notation: `/prefix*`,
/// an exact path, `PathPrefix:/x`, `regex <re>`; `/*` for a rule that matches everything.
pub fn route_matches(rule: &sluice_model::HttpRouteRule) -> Vec<String> {
    use sluice_model::route::StrMatcher;
    if rule.matches.is_empty() {
        return vec!["/*".to_string()];
    }
    rule.matches
        .iter()
        .map(|m| match &m.uri {
            None => "/*".to_string(),
            Some(StrMatcher::Prefix(p)) => format!("{p}*"),
            Some(StrMatcher::Exact(p)) => p.clone(),
            Some(StrMatcher::PathSeparatedPrefix(p)) => format!("PathPrefix:{p}"),
            Some(StrMatcher::Regex(re)) => format!("regex {}", re.as_str()),
        })
        .collect()
}

/// Envoy's `/certs` shape for the mesh identity: `{"certificates":[{"ca_cert":[],
/// "cert_chain":[{serial_number, subject_alt_names[{uri}|{dns}], valid_from, expiration_time,
/// days_until_expiration}]}]}`; `{"certificates":[]}` without an identity.
pub fn certs_json(identity: Option<&Identity>) -> serde_json::Value {
    let Some(identity) = identity else {
        return serde_json::json!({ "certificates": [] });
    };
    let certified = identity.certificate();
    let now = std::time::SystemTime::now();
    let chain: Vec<serde_json::Value> = certified
        .cert
        .iter()
        .filter_map(|der| describe_der(der).ok())
        .map(|c| {
            let mut sans: Vec<serde_json::Value> = c
                .uri_sans
                .iter()
                .map(|u| serde_json::json!({ "uri": u }))
                .collect();
            sans.extend(c.dns_sans.iter().map(|d| serde_json::json!({ "dns": d })));
            let days = c
                .not_after
                .duration_since(now)
                .map_or(0, |d| d.as_secs() / 86_400);
            serde_json::json!({
                "path": "<inline>",
                "serial_number": c.serial.replace(':', "").to_ascii_lowercase(),
                "subject_alt_names": sans,
                // uint64 fields are strings in proto3 JSON, as Envoy prints them.
                "days_until_expiration": days.to_string(),
                "valid_from": rfc3339(c.not_before),
                "expiration_time": rfc3339(c.not_after),
            })
        })
        .collect();
    serde_json::json!({
        "certificates": [{ "ca_cert": [], "cert_chain": chain }]
    })
}

/// `2023-05-15T01:30:52Z`.
fn rfc3339(t: std::time::SystemTime) -> String {
    let s = format_start_time(t);
    // `…:52.409Z` → `…:52Z`
    match s.rsplit_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

/// Envoy's `/listeners` text: `<name>::<address>` lines.
pub fn listeners_text(listeners: &[(String, std::net::SocketAddr)]) -> String {
    listeners
        .iter()
        .map(|(name, addr)| format!("{name}::{addr}\n"))
        .collect()
}

/// Builds Envoy's `{"listener_statuses":[…]}` from `<name>::<address>` lines.
pub(super) fn listeners_json(text: &str) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| line.split_once("::"))
        .map(|(name, addr)| {
            let local_address = match addr.parse::<std::net::SocketAddr>() {
                Ok(sa) => serde_json::json!({
                    "socket_address": { "address": sa.ip().to_string(), "port_value": sa.port() }
                }),
                Err(_) => serde_json::json!({ "socket_address": { "address": addr } }),
            };
            serde_json::json!({ "name": name, "local_address": local_address })
        })
        .collect();
    serde_json::json!({ "listener_statuses": statuses })
}

/// A gateway's HTTP route tables for `/config_dump` (`gateway_routes`): per gateway port, the
/// virtual hosts of the VirtualServices bound to its servers, most specific first, as
/// `sluice proxy-config route` lists them (`http.<port>`). Empty for a sidecar, whose virtual
/// hosts are the dump's `virtual_hosts`.
pub fn gateway_routes(snap: &sluice_model::Snapshot) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = snap
        .gateway_ports()
        .iter()
        .map(|port| {
            let vhosts: Vec<serde_json::Value> = snap
                .gateway_virtual_hosts(port.number)
                .into_iter()
                .map(|v| {
                    serde_json::json!({
                        "domain": v.domain.as_ref(),
                        "source": v.source.as_ref(),
                        "routes": v.rules.iter().map(|r| serde_json::json!({
                            "name": r.name.as_deref(),
                            "source": r.source.as_ref(),
                            "matches": route_matches(r),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": format!("http.{}", port.number),
                "port": port.number,
                "virtual_hosts": vhosts,
            })
        })
        .collect();
    serde_json::Value::Array(ports)
}

/// An [`AdminSource`](crate::admin::AdminSource) whose `/config_dump` also carries the gateway
/// route tables ([`gateway_routes`]) when the proxy is a gateway and the inner dump has none.
pub struct WithGatewayRoutes {
    pub inner: std::sync::Arc<dyn crate::admin::AdminSource>,
    pub snapshots: std::sync::Arc<arc_swap::ArcSwap<sluice_model::Snapshot>>,
}

impl crate::admin::AdminSource for WithGatewayRoutes {
    fn config_dump(&self) -> serde_json::Value {
        let mut dump = self.inner.config_dump();
        let snap = self.snapshots.load();
        if snap.proxy.kind == sluice_model::ProxyKind::Gateway {
            if let Some(obj) = dump.as_object_mut() {
                if !obj.contains_key("gateway_routes") {
                    obj.insert("gateway_routes".into(), gateway_routes(&snap));
                }
            }
        }
        dump
    }

    fn clusters_text(&self) -> String {
        self.inner.clusters_text()
    }

    fn clusters_json(&self) -> serde_json::Value {
        self.inner.clusters_json()
    }

    fn listeners_text(&self) -> String {
        self.inner.listeners_text()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn not_ready_reason(&self) -> String {
        self.inner.not_ready_reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_drops_milliseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_606_339_578_409);
        assert_eq!(rfc3339(t), "2020-11-25T21:26:18Z");
    }
}
