//! Host names as Istio matches them: exact names, `*.suffix` wildcards and `*`.

use std::cmp::Ordering;
use std::collections::HashMap;

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
    crate::work_count(1);
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

/// Host patterns (exact, `*suffix`, `*`) → values, answering "which patterns match this name"
/// in time linear in the name's length, whatever the number of patterns. Comparing every name
/// with every pattern made compile quadratic: 3,000 services and 3,000 DestinationRules were nine
/// million comparisons per proxy per edit. Matching is [`matches()`]' (ASCII case-insensitive).
#[derive(Debug)]
pub struct HostMap<T> {
    exact: HashMap<String, Vec<T>>,
    /// Trie of the wildcards' suffixes, reversed; node 0 is the empty suffix (pattern `*`).
    wildcard_values: Vec<Vec<T>>,
    edges: HashMap<(usize, u8), usize>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: HashMap::new(),
            wildcard_values: vec![Vec::new()],
            edges: HashMap::new(),
        }
    }
}

impl<T> HostMap<T> {
    /// Adds `value` under `pattern`; values of one pattern keep their insertion order.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let Some(suffix) = pattern.strip_prefix('*') else {
            self.exact
                .entry(pattern.to_ascii_lowercase())
                .or_default()
                .push(value);
            return;
        };
        let mut node = 0;
        for b in suffix.bytes().rev().map(|b| b.to_ascii_lowercase()) {
            node = match self.edges.get(&(node, b)) {
                Some(&child) => child,
                None => {
                    let child = self.wildcard_values.len();
                    self.wildcard_values.push(Vec::new());
                    self.edges.insert((node, b), child);
                    child
                }
            };
        }
        self.wildcard_values[node].push(value);
    }

    /// The values of every pattern that matches `name`, most specific pattern first (exact,
    /// then longer suffixes before shorter ones, as [`specificity`] orders them).
    pub fn matching<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [T]> + 's {
        let lower = name.to_ascii_lowercase();
        let exact = self.exact.get(&lower).map(Vec::as_slice);
        // Wildcard suffixes strictly shorter than the name: `*.foo.com` does not match `.foo.com`.
        let mut wild: Vec<&[T]> = Vec::new();
        let bytes = lower.as_bytes();
        let mut node = 0;
        let mut depth = 0;
        loop {
            let values = &self.wildcard_values[node];
            if !values.is_empty() && (depth < bytes.len() || node == 0) {
                wild.push(values);
            }
            if depth == bytes.len() {
                break;
            }
            depth += 1;
            match self.edges.get(&(node, bytes[bytes.len() - depth])) {
                Some(&child) => node = child,
                None => break,
            }
        }
        exact.into_iter().chain(wild.into_iter().rev())
    }

    /// The values of the most specific pattern that matches `name` (Istio's
    /// `MostSpecificHostMatch`).
    pub fn most_specific(&self, name: &str) -> Option<&[T]> {
        self.matching(name).next()
    }
}

/// Host patterns (exact, `*suffix`, `*`) → values, answering "which patterns intersect this
/// pattern" ([`intersects`]) and "does some pattern cover this name" (a Sidecar import) in time
/// proportional to the pattern's length and the number of answers, whatever the number of
/// patterns. Pairwise comparison made Gateway, Sidecar and DestinationRule processing quadratic.
///
/// Every pattern is a path in one trie of reversed names, so the patterns that end with a
/// name's suffix are on its path, and those that end with the whole name are below it.
#[derive(Debug)]
pub struct HostIndex<T> {
    nodes: Vec<IndexNode<T>>,
    edges: HashMap<(usize, u8), usize>,
}

#[derive(Debug)]
struct IndexNode<T> {
    exact: Vec<T>,
    wildcard: Vec<T>,
    children: Vec<usize>,
}

impl<T> IndexNode<T> {
    fn new() -> Self {
        IndexNode {
            exact: Vec::new(),
            wildcard: Vec::new(),
            children: Vec::new(),
        }
    }
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            nodes: vec![IndexNode::new()],
            edges: HashMap::new(),
        }
    }
}

impl<T> HostIndex<T> {
    /// Adds `value` under `pattern` (matched ASCII case-insensitively).
    pub fn insert(&mut self, pattern: &str, value: T) {
        let (wildcard, body) = match pattern.strip_prefix('*') {
            Some(suffix) => (true, suffix),
            None => (false, pattern),
        };
        let mut node = 0;
        for b in body.bytes().rev().map(|b| b.to_ascii_lowercase()) {
            node = match self.edges.get(&(node, b)) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(IndexNode::new());
                    self.nodes[node].children.push(child);
                    self.edges.insert((node, b), child);
                    child
                }
            };
        }
        let slot = &mut self.nodes[node];
        if wildcard {
            slot.wildcard.push(value);
        } else {
            slot.exact.push(value);
        }
    }

    /// The nodes on the path of `body` (reversed), from the root: the last is `body`'s own node
    /// when the whole of it is in the trie.
    fn path(&self, body: &str) -> (Vec<usize>, bool) {
        let mut path = vec![0];
        let mut node = 0;
        for b in body.bytes().rev().map(|b| b.to_ascii_lowercase()) {
            crate::work_count(1);
            match self.edges.get(&(node, b)) {
                Some(&child) => {
                    node = child;
                    path.push(node);
                }
                None => return (path, false),
            }
        }
        (path, true)
    }

    /// Calls `f` with the value of every pattern that [`intersects`] `pattern`, until `f`
    /// returns false. Order: patterns that are suffixes of `pattern` (shortest first), then
    /// the others.
    pub fn visit_intersecting<'s>(&'s self, pattern: &str, mut f: impl FnMut(&'s T) -> bool) {
        let (wildcard, body) = match pattern.strip_prefix('*') {
            Some(suffix) => (true, suffix),
            None => (false, pattern),
        };
        let (path, complete) = self.path(body);
        let mut report = |values: &'s [T]| {
            crate::work_count(values.len() as u64);
            values.iter().all(&mut f)
        };
        for (depth, &node) in path.iter().enumerate() {
            // `*t` matches a name only when the name is longer than `t` (`*.a.com` does not
            // match `.a.com`); another wildcard it intersects when either suffix ends the other.
            let intersect = node == 0 || depth < body.len() || wildcard;
            if intersect && !report(&self.nodes[node].wildcard) {
                return;
            }
        }
        if !complete {
            return;
        }
        let Some(&own) = path.last() else {
            return;
        };
        if !wildcard || body.is_empty() {
            // An exact name intersects the same exact name; `*` every exact name, even "".
            if !report(&self.nodes[own].exact) {
                return;
            }
        }
        if !wildcard {
            return;
        }
        // Everything longer that ends with the suffix: exact names and wildcards alike.
        let mut stack: Vec<usize> = self.nodes[own].children.clone();
        while let Some(node) = stack.pop() {
            crate::work_count(1);
            let n = &self.nodes[node];
            if !report(&n.exact) || !report(&n.wildcard) {
                return;
            }
            stack.extend(n.children.iter().copied());
        }
    }

    /// True when some pattern [`intersects`] `pattern`.
    pub fn any_intersecting(&self, pattern: &str) -> bool {
        let mut found = false;
        self.visit_intersecting(pattern, |_| {
            found = true;
            false
        });
        found
    }

    /// The values of every pattern that [`intersects`] `pattern`.
    pub fn intersecting(&self, pattern: &str) -> Vec<&T> {
        let mut out = Vec::new();
        self.visit_intersecting(pattern, |v| {
            out.push(v);
            true
        });
        out
    }

    /// True when some pattern covers `name` as a Sidecar egress host covers a service host
    /// (Istio's `SubsetOf`: every name `name` matches, the pattern matches too).
    pub fn covers(&self, name: &str) -> bool {
        let (wildcard, body) = match name.strip_prefix('*') {
            Some(suffix) => (true, suffix),
            None => (false, name),
        };
        let (path, complete) = self.path(body);
        if path.iter().any(|&n| !self.nodes[n].wildcard.is_empty()) {
            return true;
        }
        complete
            && !wildcard
            && path
                .last()
                .is_some_and(|&n| !self.nodes[n].exact.is_empty())
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

    /// Agrees with [`matches`] and [`specificity`] for every pair of a set of names.
    #[test]
    fn host_map_agrees_with_pairwise_matching() {
        let patterns = [
            "*",
            "*.com",
            "*.foo.com",
            "a.foo.com",
            "*foo.com",
            "foo.com",
            "*.FOO.com",
            "*.b.foo.com",
            "x.org",
        ];
        let mut map = HostMap::default();
        for (i, p) in patterns.iter().enumerate() {
            map.insert(p, i);
        }
        for name in [
            "a.foo.com",
            "b.foo.com",
            "foo.com",
            "x.b.foo.com",
            "A.FOO.COM",
            "x.org",
            "",
            "com",
            ".foo.com",
            "*.foo.com",
            "*.x.foo.com",
        ] {
            let mut expected: Vec<&str> = patterns
                .iter()
                .copied()
                .filter(|p| matches(p, name))
                .collect();
            expected.sort_by(|a, b| specificity(&a.to_ascii_lowercase(), &b.to_ascii_lowercase()));
            let got: Vec<&str> = map
                .matching(name)
                .flat_map(|vs| vs.iter().map(|&i| patterns[i]))
                .collect();
            let lower =
                |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_ascii_lowercase()).collect() };
            assert_eq!(lower(&got), lower(&expected), "{name}");
        }
    }

    /// Agrees with [`intersects`] for every pair of a set of patterns.
    #[test]
    fn host_index_agrees_with_pairwise_intersection() {
        let patterns = [
            "*",
            "*.com",
            "*.foo.com",
            "a.foo.com",
            "*foo.com",
            "foo.com",
            "*.FOO.com",
            "*.b.foo.com",
            "x.org",
            "com",
            ".foo.com",
            "*.x.foo.com",
            "b.foo.com",
        ];
        let mut index = HostIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, i);
        }
        for query in patterns
            .iter()
            .chain(&["", "A.FOO.COM", "*.org", "zzz", "*zzz"])
        {
            let mut expected: Vec<usize> = (0..patterns.len())
                .filter(|&i| intersects(patterns[i], query))
                .collect();
            let mut got: Vec<usize> = index.intersecting(query).into_iter().copied().collect();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "{query}");
            assert_eq!(
                index.any_intersecting(query),
                !expected.is_empty(),
                "{query}"
            );
        }
    }

    #[test]
    fn host_index_covers_as_a_sidecar_imports() {
        let covers = |patterns: &[&str], name: &str| {
            let mut index = HostIndex::default();
            for p in patterns {
                index.insert(p, ());
            }
            index.covers(name)
        };
        assert!(covers(&["*.example.com"], "a.example.com"));
        assert!(covers(&["*.example.com"], "*.a.example.com"));
        assert!(covers(&["*.example.com"], "*.example.com"));
        assert!(covers(&["*"], "*.example.com"));
        assert!(!covers(&["*.example.com"], "example.com"));
        assert!(!covers(&["a.example.com"], "*.example.com"));
        assert!(!covers(&["*.example.com"], "*.com"));
        assert!(covers(&["httpbin.org"], "HttpBin.org"));
        assert!(!covers(&["httpbin.org"], "www.httpbin.org"));
        assert!(!covers(&[], "a"));
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
