//! Istio admission-webhook checks (`pkg/config/validation` in istio/istio), one module per kind.
//!
//! [`validate`] returns errors (Istio's webhook would refuse the resource, so sluice does not
//! serve it) and warnings (accepted, but probably not what the user meant). Messages keep
//! Istio's wording where users may search for it; every diagnostic names the field and sits on
//! that field's line.
//!
//! Deprecated early forms (seed 003) are reported while decoding, where they are rewritten; this
//! module sees only their current form and does not repeat those warnings.

mod common;
mod destination_rule;
mod gateway;
mod host_index;
mod kube;
mod names;
pub(crate) mod other_kinds;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use service_entry::MAX_HOST_PORTS;

use crate::resource::{Diagnostic, Resource, Severity, Spec};

/// Compiled size allowed for one user regex (the `regex` crate's `size_limit`, and its lazy DFA
/// cache). The crate's default is 10 MiB per regex: a thousand routes with a 1 KB pattern such as
/// `(a{1000}){1000}` would take gigabytes. Real route patterns compile to a few KiB.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Compiles a pattern from the configuration with the bounds every user regex gets, in
/// validation and in the compiled routes alike (so what validation accepts always compiles).
pub fn bounded_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Validates one resource; errors mean the resource must not be served.
pub fn validate(res: &Resource) -> Vec<Diagnostic> {
    // Read only by `sluice analyze`: nothing a proxy would refuse (a Telemetry is checked
    // while decoding, and only a valid one becomes a resource).
    if res.kind.is_analysis_only() {
        return Vec::new();
    }
    let mut r = Report::new(res);
    common::metadata(&mut r);
    match &res.spec {
        Spec::VirtualService(vs) => virtual_service::check(&mut r, vs),
        Spec::DestinationRule(dr) => destination_rule::check(&mut r, dr),
        Spec::ServiceEntry(se) => service_entry::check(&mut r, se),
        Spec::Gateway(gw) => gateway::check(&mut r, gw),
        Spec::WorkloadEntry(we) => service_entry::workload_entry(&mut r, we, "spec", None, true),
        Spec::Sidecar(sc) => sidecar::check(&mut r, sc),
        Spec::Service(svc) => kube::service(&mut r, svc),
        Spec::Endpoints(subsets) => kube::endpoints(&mut r, subsets),
        Spec::Ingress(ing) => kube::ingress(&mut r, ing),
        Spec::PeerAuthentication(pa) => security::peer_authentication(&mut r, pa),
        Spec::AuthorizationPolicy(ap) => security::authorization_policy(&mut r, ap),
        Spec::ConfigMap {
            mesh: Some(mesh), ..
        } => kube::mesh_config(&mut r, mesh),
        Spec::ConfigMap { mesh: None, .. }
        | Spec::Secret { .. }
        | Spec::IngressClass(_)
        | Spec::Pod(_)
        | Spec::Namespace
        | Spec::KubernetesGateway(_)
        // Checked while decoding, with the other kinds sluice does not enforce.
        | Spec::Telemetry(_)
        // Checked by `validate::other_kinds` when decoded.
        | Spec::RequestAuthentication(_) => {}
    }
    r.out
}

/// Collects the diagnostics of one resource.
pub(crate) struct Report<'a> {
    res: &'a Resource,
    out: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    fn new(res: &'a Resource) -> Self {
        Report {
            res,
            out: Vec::new(),
        }
    }

    /// The resource's namespace (`.` in `exportTo` means this one).
    fn namespace(&self) -> &'a str {
        &self.res.meta.namespace
    }

    /// An error: the resource is refused.
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out
            .push(Diagnostic::at(self.res, Severity::Error, field, message));
    }

    /// A warning: the resource is served anyway.
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out
            .push(Diagnostic::at(self.res, Severity::Warning, field, message));
    }

    /// Reports `result` as an error on `field` if it failed.
    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}
