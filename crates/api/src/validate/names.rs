//! Names, hosts, addresses, ports and protocols, checked the way Istio checks them
//! (`pkg/config/validation/agent`, `pkg/config/labels`, `pkg/config/host`, `pkg/config/protocol`).

use std::net::IpAddr;

use crate::duration::Duration;

/// `port number N must be in the range 1..65535`.
pub(super) fn port(number: u32) -> Result<(), String> {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!(
            "port number {number} must be in the range 1..65535"
        ))
    }
}

/// A DNS-1123 label as Istio accepts it (letters of either case, digits, inner `-`, ≤ 63).
pub(super) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A first label that may be a wildcard: `*`, `*foo`, `*-foo` or a plain label.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

/// A Kubernetes object name: a lower-case DNS-1123 subdomain.
pub(super) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.')
            .all(|label| is_dns1123_label(label) && !label.bytes().any(|c| c.is_ascii_uppercase()))
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_string());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or("");
    if !tld.is_empty() && tld.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is an unambiguous absolute name.
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully-qualified (or short) DNS name without wildcards.
pub(super) fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// A DNS name whose first label may be a wildcard (`*.example.com`, `*`).
pub(super) fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => dns1123_labels(rest),
        None => Ok(()),
    }
}

/// As [`wildcard_domain`], also allowing Istio's generated `outbound_.<port>_…` SNI names.
pub(super) fn wildcard_domain_for_gateway(sni: bool, domain: &str) -> Result<(), String> {
    if sni && domain.split('.').next() == Some("outbound_") {
        dns1123_preconditions(domain)?;
        return Ok(());
    }
    wildcard_domain(domain)
}

/// Only a whole leading label may be `*` (`*.example.com`, not `foo*.example.com`).
pub(super) fn partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        Err(format!("partial wildcard {host:?} not allowed"))
    } else {
        Ok(())
    }
}

pub(super) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An IP address.
pub(super) fn ip_address(s: &str) -> Result<(), String> {
    if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{s} is not a valid IP"))
    }
}

/// An IP address or a CIDR block.
pub(super) fn ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        s.parse::<ipnet::IpNet>()
            .map(|_| ())
            .map_err(|_| format!("{s} is not a valid CIDR block"))
    } else {
        ip_address(s)
    }
}

/// The path of a Unix domain socket (`unix://` stripped).
pub(super) fn unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".to_string());
    }
    // Abstract sockets are named `@name`.
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// Durations Envoy can take: at least 1ms, whole milliseconds.
pub(super) fn duration(d: &Duration) -> Result<(), String> {
    let d = d.0;
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".to_string());
    }
    let whole_ms = u64::try_from(d.as_millis()).map(std::time::Duration::from_millis);
    if whole_ms != Ok(d) {
        return Err("only durations to ms precision are supported".to_string());
    }
    Ok(())
}

/// `ns/host` (or, for Gateways, a bare host) as written in Gateway servers and Sidecar egress.
pub(super) fn namespace_slash_host(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let Some((ns, host)) = hostname.split_once('/') else {
        if is_gateway {
            host_part(hostname, true, &mut errs);
        } else {
            errs.push("host must be of form namespace/dnsName".to_string());
        }
        return errs;
    };
    if ns.is_empty() || host.is_empty() {
        errs.push("config namespace and dnsName in host entry cannot be empty".to_string());
    }
    let special = if is_gateway {
        ns == "*" || ns == "."
    } else {
        ns == "*" || ns == "." || ns == "~"
    };
    if !special && !is_dns1123_label(ns) {
        let what = if is_gateway { "gateway" } else { "sidecar" };
        errs.push(format!("invalid namespace value {ns:?} in {what}"));
    }
    host_part(host, is_gateway, &mut errs);
    errs
}

fn host_part(host: &str, is_gateway: bool, errs: &mut Vec<String>) {
    if host != "*" && !host.contains('.') {
        errs.push("short names (non FQDN) are not allowed".to_string());
    }
    if let Err(e) = wildcard_domain(host) {
        // Gateways also accept an IP address as the host.
        if !is_gateway || !is_ip(host) {
            errs.push(e);
        }
    }
    if let Err(e) = partial_wildcard(host) {
        errs.push(e);
    }
}

/// Istio's `host.Name.Matches`: equal, or one wildcard covers the other. Validation asks
/// [`super::host_index::HostIndex`] instead (linear, not pairwise); this is what it is tested
/// against.
#[cfg(test)]
pub(super) fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if a.len() < b.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `a` matches is also matched by `b` (the definition
/// [`super::host_index::HostIndex::covers`] is tested against).
#[cfg(test)]
pub(super) fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// A port protocol as Istio's `protocol.Parse` reads it (case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Https,
    Grpc,
    GrpcWeb,
    Tcp,
    Tls,
    Udp,
    Mongo,
    Redis,
    Mysql,
}

impl Protocol {
    pub(super) fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "http_proxy" => Protocol::HttpProxy,
            "https" => Protocol::Https,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => return None,
        })
    }

    pub(super) fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::HttpProxy
                | Protocol::Grpc
                | Protocol::GrpcWeb
        )
    }

    /// Routed by SNI without terminating TLS.
    pub(super) fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(wildcard_domain("*.example.com").is_ok());
        assert!(wildcard_domain("*").is_ok());
        assert!(wildcard_domain("httpbin").is_ok());
        assert!(wildcard_domain("a.*.com").is_err());
        assert!(wildcard_domain("").is_err());
        assert!(wildcard_domain("1.2.3.4").is_err());
        assert!(fqdn("*.example.com").is_err());
        assert!(fqdn("example.com.").is_ok());
    }

    #[test]
    fn host_relations() {
        assert!(host_matches("*.foo.com", "a.foo.com"));
        assert!(!host_matches("*.foo.com", "foo.com"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches("*.com", "*.foo.com"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
        assert!(host_subset_of("*.a.foo.com", "*.foo.com"));
    }

    #[test]
    fn gateway_hosts() {
        assert!(namespace_slash_host("*", true).is_empty());
        assert!(namespace_slash_host("prod/*.example.com", true).is_empty());
        assert!(namespace_slash_host("./foo.example.com", true).is_empty());
        assert_eq!(
            namespace_slash_host("foo", true),
            vec!["short names (non FQDN) are not allowed".to_string()]
        );
        assert!(!namespace_slash_host("foo.example.com", false).is_empty());
    }
}
