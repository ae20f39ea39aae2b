//! Early (pre-1.0) Istio forms that the seeds are written in, accepted with a warning.
//!
//! Istio itself stopped accepting these long ago, but the user's specification (seed 003, the
//! 0.7-era ingress task) uses them and must load as written. Each is rewritten into the current
//! form here, so nothing downstream has to know about them.

use serde_json::Value;

use crate::networking::{Destination, DestinationRule, Gateway, VirtualService};

use super::yaml::Positions;

/// A warning about a field path.
pub(super) type Warning = (String, String);

/// `match:` written as a single condition instead of a list (seed 003's routes). Rewritten into a
/// one-element list before typed decoding; line positions move along with it.
pub(super) fn match_object_to_list(spec: &mut Value, positions: &mut Positions) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for kind in ["http", "tls", "tcp"] {
        let Some(Value::Array(routes)) = spec.get_mut(kind) else {
            continue;
        };
        for (i, route) in routes.iter_mut().enumerate() {
            let Some(m) = route.get_mut("match") else {
                continue;
            };
            if !m.is_object() {
                continue;
            }
            let single = m.take();
            *m = Value::Array(vec![single]);
            let base = format!("spec.{kind}[{i}].match");
            move_positions(positions, &base);
            warnings.push((
                base,
                "`match` should be a list of conditions; this single condition was read as a \
                 one-element list"
                    .to_string(),
            ));
        }
    }
    warnings
}

/// Re-keys `base.x…` positions as `base[0].x…`.
fn move_positions(positions: &mut Positions, base: &str) {
    let prefix = format!("{base}.");
    let moved: Vec<(String, u32)> = super::yaml::positions_under(positions, &prefix)
        .map(|(k, v)| (format!("{base}[0].{}", &k[prefix.len()..]), *v))
        .collect();
    if let Some(line) = positions.get(base).copied() {
        positions.insert(format!("{base}[0]"), line);
    }
    positions.extend(moved);
}

/// Destinations written with `name:` (renamed `host` in Istio 0.8): `host` is filled in from it.
pub(super) fn virtual_service(vs: &mut VirtualService) -> Vec<Warning> {
    let mut w = Vec::new();
    for (i, http) in vs.http.iter_mut().enumerate() {
        for (j, r) in http.route.iter_mut().enumerate() {
            destination(
                &mut r.destination,
                &format!("spec.http[{i}].route[{j}].destination"),
                &mut w,
            );
        }
        if let Some(m) = http.mirror.as_mut() {
            destination(m, &format!("spec.http[{i}].mirror"), &mut w);
        }
        for (j, m) in http.mirrors.iter_mut().enumerate() {
            destination(
                &mut m.destination,
                &format!("spec.http[{i}].mirrors[{j}].destination"),
                &mut w,
            );
        }
    }
    for (i, tls) in vs.tls.iter_mut().enumerate() {
        for (j, r) in tls.route.iter_mut().enumerate() {
            destination(
                &mut r.destination,
                &format!("spec.tls[{i}].route[{j}].destination"),
                &mut w,
            );
        }
    }
    for (i, tcp) in vs.tcp.iter_mut().enumerate() {
        for (j, r) in tcp.route.iter_mut().enumerate() {
            destination(
                &mut r.destination,
                &format!("spec.tcp[{i}].route[{j}].destination"),
                &mut w,
            );
        }
    }
    w
}

fn destination(d: &mut Destination, path: &str, w: &mut Vec<Warning>) {
    if let Some(name) = &d.name {
        if d.host.is_empty() {
            d.host = name.clone();
            w.push((
                format!("{path}.name"),
                "destination.name is deprecated; use destination.host".to_string(),
            ));
        } else {
            w.push((
                format!("{path}.name"),
                "destination.name is deprecated and ignored because destination.host is set"
                    .to_string(),
            ));
        }
    }
    if d.port.as_ref().is_some_and(|p| p.name.is_some()) {
        w.push((
            format!("{path}.port.name"),
            "port.name is no longer supported and is ignored; use port.number".to_string(),
        ));
    }
}

/// Port selectors by name in DestinationRule port-level settings: ignored, as in Istio ≥ 1.0.
pub(super) fn destination_rule(dr: &DestinationRule) -> Vec<Warning> {
    let mut w = Vec::new();
    let mut check = |policy: &crate::networking::TrafficPolicy, base: &str| {
        for (i, p) in policy.port_level_settings.iter().enumerate() {
            if p.port.as_ref().is_some_and(|p| p.name.is_some()) {
                w.push((
                    format!("{base}.portLevelSettings[{i}].port.name"),
                    "port.name is no longer supported and is ignored; use port.number".to_string(),
                ));
            }
        }
    };
    if let Some(tp) = &dr.traffic_policy {
        check(tp, "spec.trafficPolicy");
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &s.traffic_policy {
            check(tp, &format!("spec.subsets[{i}].trafficPolicy"));
        }
    }
    w
}

/// Gateway servers without `hosts` (meaning every host before Istio 1.0) and ports without
/// `protocol` (inferred from the port name, as Istio does for Service ports).
pub(super) fn gateway(gw: &mut Gateway) -> Vec<Warning> {
    let mut w = Vec::new();
    for (i, server) in gw.servers.iter_mut().enumerate() {
        if server.hosts.is_empty() {
            server.hosts = vec!["*".to_string()];
            w.push((
                format!("spec.servers[{i}].hosts"),
                "server has no hosts; treated as [\"*\"] as before Istio 1.0 (hosts are required \
                 now)"
                    .to_string(),
            ));
        }
        let port = &mut server.port;
        if port.protocol.as_deref().is_none_or(str::is_empty) {
            if let Some(p) = protocol_from_port_name(&port.name) {
                port.protocol = Some(p.to_string());
                w.push((
                    format!("spec.servers[{i}].port"),
                    format!(
                        "port.protocol is missing; inferred {p} from the port name {:?}",
                        port.name
                    ),
                ));
            }
        }
    }
    w
}

/// Istio's protocol from a port name's prefix (`http-web` → HTTP, `grpc-web` → GRPC-WEB).
pub(crate) fn protocol_from_port_name(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower == "grpc-web" || lower.starts_with("grpc-web-") {
        return Some("GRPC-WEB");
    }
    let prefix = lower.split('-').next().unwrap_or("");
    Some(match prefix {
        "http" => "HTTP",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "grpc" => "GRPC",
        "tcp" => "TCP",
        "tls" => "TLS",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        "mysql" => "MYSQL",
        "udp" => "UDP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_inference() {
        assert_eq!(protocol_from_port_name("http"), Some("HTTP"));
        assert_eq!(protocol_from_port_name("https"), Some("HTTPS"));
        assert_eq!(protocol_from_port_name("http2-x"), Some("HTTP2"));
        assert_eq!(protocol_from_port_name("grpc-web"), Some("GRPC-WEB"));
        assert_eq!(protocol_from_port_name("web"), None);
    }
}
