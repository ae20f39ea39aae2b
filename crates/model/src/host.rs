//! Host names as Istio matches them: exact names, `*.suffix` wildcards and `*`.

use std::cmp::Ordering;

/// Kubernetes cluster domain used to expand short names.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// True if `pattern` (exact, `*.suffix` or `*`) matches the concrete name `name`.
///
/// `*.foo.com` matches `a.foo.com` and `a.b.foo.com` but not `foo.com`, as Istio's `host.Name.Matches`.
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && ends_with_ignore_case(name, suffix),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// True if two patterns can match a common name (used for SNI and VS host compatibility).
pub fn intersects(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => ends_with_ignore_case(sa, sb) || ends_with_ignore_case(sb, sa),
        (Some(_), None) => matches(a, b),
        (None, Some(_)) => matches(b, a),
        (None, None) => a.eq_ignore_ascii_case(b),
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Orders patterns most specific first: exact before wildcard, then longer before shorter, then by
/// name, as Istio's `MoreSpecific`.
pub fn specificity(a: &str, b: &str) -> Ordering {
    let wa = a.starts_with('*');
    let wb = b.starts_with('*');
    wa.cmp(&wb)
        .then_with(|| b.len().cmp(&a.len()))
        .then_with(|| a.cmp(b))
}

/// Expands a short name (no dots) written in namespace `ns` to its FQDN, as Istio does for
/// VirtualService and DestinationRule hosts: `reviews` in `default` → `reviews.default.svc.cluster.local`.
pub fn resolve_short_name(host: &str, ns: &str) -> String {
    if host == "*" || host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{ns}.{CLUSTER_DOMAIN}", host.to_ascii_lowercase())
    }
}

/// Strips a `:port` suffix from a Host header value (IPv6 literals in brackets are kept whole).
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &authority[..i + 2],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching_follows_istio() {
        assert!(matches("*.foo.com", "a.foo.com"));
        assert!(matches("*.foo.com", "a.b.foo.com"));
        assert!(!matches("*.foo.com", "foo.com"));
        assert!(matches("*", "anything"));
        assert!(matches("HttpBin.org", "httpbin.org"));
        assert!(!matches("httpbin.org", "www.httpbin.org"));
        assert!(intersects("*.com", "*.foo.com"));
        assert!(intersects("www.google.com", "*.google.com"));
        assert!(!intersects("a.com", "b.com"));
    }

    #[test]
    fn specificity_prefers_exact_then_longer() {
        let mut v = vec!["*", "*.com", "a.foo.com", "*.foo.com"];
        v.sort_by(|a, b| specificity(a, b));
        assert_eq!(v, ["a.foo.com", "*.foo.com", "*.com", "*"]);
    }

    #[test]
    fn short_names_and_ports() {
        assert_eq!(
            resolve_short_name("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(resolve_short_name("httpbin.org", "default"), "httpbin.org");
        assert_eq!(strip_port("httpbin.org:80"), "httpbin.org");
        assert_eq!(strip_port("httpbin.org"), "httpbin.org");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
