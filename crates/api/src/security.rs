//! Istio `security.istio.io` resource specs (`v1`, `v1beta1`): PeerAuthentication and
//! AuthorizationPolicy, as users write them.
//!
//! The conventions are those of [`crate::networking`]: camelCase field names with their protobuf
//! snake_case spelling as an alias, unknown fields rejected (with a "did you mean"), enums kept as
//! strings and checked by validation so the message can list the accepted values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::networking::Labels;

/// `istio.type.v1beta1.WorkloadSelector`: the workloads (pods, WorkloadEntries, gateways) of
/// the policy's namespace whose labels include all of `matchLabels`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelector {
    #[serde(default, alias = "match_labels")]
    pub match_labels: Labels,
}

/// `istio.type.v1beta1.PolicyTargetReference`: a Service, ServiceEntry or Gateway API Gateway
/// the policy is attached to (waypoints and Kubernetes gateways). Decoded and validated; sluice
/// does not apply policies attached this way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

// === PeerAuthentication ===

/// `PeerAuthentication` spec: whether this workload's inbound side requires mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// No selector (or no labels): the policy covers the namespace, or the whole mesh when
    /// written in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Port (the workload's own port, as a map key) → mode. `None` when absent, so that an
    /// explicit empty map can be reported as Istio does.
    #[serde(
        default,
        alias = "port_level_mtls",
        skip_serializing_if = "Option::is_none"
    )]
    pub port_level_mtls: Option<BTreeMap<String, PeerMtls>>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// `UNSET` (inherit; the enum default), `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The PeerAuthentication modes, in Istio's enum order.
pub const PEER_MTLS_MODES: [&str; 4] = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

// === AuthorizationPolicy ===

/// `AuthorizationPolicy` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    #[serde(default, alias = "target_ref", skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `None` when `rules` is absent: a DENY or CUSTOM policy without rules is refused, while
    /// an ALLOW policy without rules denies everything it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    /// `ALLOW` (the enum default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The extension provider of a CUSTOM policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicy {
    /// The action, upper-cased, `ALLOW` when unset.
    pub fn action(&self) -> String {
        self.action
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or("ALLOW")
            .to_ascii_uppercase()
    }
}

/// The annotation that turns an ALLOW/DENY AuthorizationPolicy into a dry run: evaluated for
/// logs and stats, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The AuthorizationPolicy actions, in Istio's enum order.
pub const AUTHZ_ACTIONS: [&str; 4] = ["ALLOW", "DENY", "AUDIT", "CUSTOM"];

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
}

/// `Rule`: matches when all of `from`, `to` and `when` match (an absent field matches
/// everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Any of the sources (OR). `Some(empty)` is refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    /// Any of the operations (OR). `Some(empty)` is refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    /// All of the conditions (AND).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `Rule.From`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `Source`: the peer. Fields are ANDed; the values of one field are ORed; `not*` negate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from mTLS, `cluster.local/ns/NS/sa/SA`; `*` prefix/suffix wildcards.
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default, alias = "not_principals")]
    pub not_principals: Vec<String>,
    /// JWT `iss/sub` (RequestAuthentication); HTTP only.
    #[serde(default, alias = "request_principals")]
    pub request_principals: Vec<String>,
    #[serde(default, alias = "not_request_principals")]
    pub not_request_principals: Vec<String>,
    /// The namespace in the peer's mTLS identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, alias = "not_namespaces")]
    pub not_namespaces: Vec<String>,
    /// The peer's address (IP or CIDR).
    #[serde(default, alias = "ip_blocks")]
    pub ip_blocks: Vec<String>,
    #[serde(default, alias = "not_ip_blocks")]
    pub not_ip_blocks: Vec<String>,
    /// The original client address (`X-Forwarded-For` / PROXY protocol at gateways).
    #[serde(default, alias = "remote_ip_blocks")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, alias = "not_remote_ip_blocks")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Kubernetes service accounts (`ns/name` or `name`), newer Istio releases.
    #[serde(default, alias = "service_accounts")]
    pub service_accounts: Vec<String>,
    #[serde(default, alias = "not_service_accounts")]
    pub not_service_accounts: Vec<String>,
    /// Trust domains of the peer's mTLS identity; `*` prefix/suffix wildcards.
    #[serde(
        default,
        alias = "trust_domains",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trust_domains: Vec<String>,
    #[serde(
        default,
        alias = "not_trust_domains",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_trust_domains: Vec<String>,
}

/// `Rule.To`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// `Operation`: what the request asks for. Fields are ANDed; values ORed; `not*` negate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP Host / :authority, case-insensitive, `*` prefix/suffix wildcards; HTTP only.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, alias = "not_hosts")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings of digits (`"8080"`).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default, alias = "not_ports")]
    pub not_ports: Vec<String>,
    /// HTTP methods; HTTP only.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default, alias = "not_methods")]
    pub not_methods: Vec<String>,
    /// Paths (`/exact`, `/prefix*`, `*suffix`, `*`, `{*}`/`{**}` templates); HTTP only.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default, alias = "not_paths")]
    pub not_paths: Vec<String>,
}

/// `Condition`: an attribute (`key`) that must have one of `values` and none of `notValues`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default, alias = "not_values")]
    pub not_values: Vec<String>,
}
