//! The kinds sluice validates without enforcing ([`crate::unenforced`]): Istio's webhook checks
//! (`ValidateRequestAuthentication`, `ValidateTelemetry`, `ValidateWorkloadGroup`,
//! `ValidateProxyConfig`, `ValidateWasmPlugin`, `ValidateTrafficExtension`,
//! `envoyfilter.ValidateEnvoyFilter`) together with the rules of their CRD schemas
//! (`x-kubernetes-validations`, `minLength`, enums, ranges), since the API server applies both
//! and a document passes only if it passes both.
//!
//! These checks run while decoding, before any [`Resource`](crate::Resource) exists (only a
//! valid Telemetry becomes one), so this module reports [`Finding`]s that decoding turns into
//! diagnostics on the document's lines.

use std::collections::BTreeSet;

use crate::networking::{Labels, WorkloadEntry};
use crate::resource::{ObjectMeta, Severity};
use crate::security::{PolicySelector, PolicyTargetReference, DRY_RUN_ANNOTATION};
use crate::unenforced::*;

use super::names::{self, is_dns1123_label, is_dns1123_subdomain};

/// One problem of a document: what the webhook or the CRD schema would say, on which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub severity: Severity,
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Out {
    items: Vec<Finding>,
}

impl Out {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.items.push(Finding {
            severity: Severity::Error,
            field: field.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.items.push(Finding {
            severity: Severity::Warning,
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}

/// Annotations only istiod may set; the webhook refuses them on any object.
const INTERNAL_ANNOTATIONS: [&str; 3] = [
    "internal.istio.io/webhook-always-reject",
    "internal.istio.io/parent-namespace",
    "internal.istio.io/parents",
];

/// Validates one document of these kinds: metadata and spec.
pub(crate) fn check(meta: &ObjectMeta, spec: &UnenforcedSpec) -> Vec<Finding> {
    let mut out = Out::default();
    metadata(&mut out, meta);
    match spec {
        UnenforcedSpec::RequestAuthentication(ra) => request_authentication(&mut out, ra),
        UnenforcedSpec::Telemetry(t) => telemetry(&mut out, t),
        UnenforcedSpec::WorkloadGroup(wg) => workload_group(&mut out, wg),
        UnenforcedSpec::ProxyConfig(pc) => proxy_config(&mut out, pc),
        UnenforcedSpec::EnvoyFilter(ef) => envoy_filter(&mut out, ef),
        UnenforcedSpec::WasmPlugin(wp) => wasm_plugin(&mut out, wp),
        UnenforcedSpec::TrafficExtension(te) => traffic_extension(&mut out, te),
    }
    out.items
}

// === shared ===

fn metadata(out: &mut Out, meta: &ObjectMeta) {
    let name = meta.name.as_str();
    if !is_dns1123_subdomain(name) {
        out.error(
            "metadata.name",
            format!(
                "invalid name {name:?}: use lower-case letters, digits, '-' and '.', starting and \
                 ending with a letter or digit"
            ),
        );
    }
    let ns = meta.namespace.as_str();
    if !is_dns1123_label(ns) || ns.bytes().any(|c| c.is_ascii_uppercase()) {
        out.error(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: use lower-case letters, digits and '-'"),
        );
    }
    if meta.annotations.contains_key(DRY_RUN_ANNOTATION) {
        out.error(
            format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            format!("annotation {DRY_RUN_ANNOTATION} is supported on AuthorizationPolicy only; remove it"),
        );
    }
    for a in INTERNAL_ANNOTATIONS {
        if meta.annotations.contains_key(a) {
            out.error(
                format!("metadata.annotations.{a}"),
                format!("annotation {a:?} may not be set by users"),
            );
        }
    }
}

/// An enum written as a string: one of `allowed`.
fn enum_value(out: &mut Out, path: &str, value: Option<&str>, allowed: &[&str]) {
    if let Some(v) = value {
        if !allowed.contains(&v) {
            out.error(
                path,
                format!(
                    "invalid value {v:?}; expected one of {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

/// A string the CRD gives `minLength: 1`: absent is fine, empty is not.
fn not_empty(out: &mut Out, path: &str, value: Option<&str>) {
    if value == Some("") {
        out.error(path, "may not be empty when set");
    }
}

fn max_len(out: &mut Out, path: &str, value: &str, max: usize) {
    if value.len() > max {
        out.error(
            path,
            format!("too long: {} characters, at most {max}", value.len()),
        );
    }
}

fn max_items(out: &mut Out, path: &str, len: usize, max: usize) {
    if len > max {
        out.error(path, format!("too many entries: {len}, at most {max}"));
    }
}

/// A signed 32-bit protobuf field decoded as `i64`.
fn int32(out: &mut Out, path: &str, value: i64) {
    if i32::try_from(value).is_err() {
        out.error(path, format!("{value} does not fit a 32-bit integer"));
    }
}

/// `port must be between 1-65535`, as the CRDs say.
fn port_range(out: &mut Out, path: &str, port: u64) {
    if !(1..=65535).contains(&port) {
        out.error(
            path,
            format!("port number {port} must be in the range 1..65535"),
        );
    }
}

/// `selector.matchLabels` of the security/telemetry/extensions kinds (`validateWorkloadSelector`
/// and the CRD's rules).
fn selector(out: &mut Out, sel: Option<&PolicySelector>) {
    let Some(sel) = sel else {
        return;
    };
    let path = "spec.selector.matchLabels";
    max_items(out, path, sel.match_labels.len(), 4096);
    selector_labels(out, path, &sel.match_labels);
    if sel.match_labels.is_empty() {
        out.warn(
            "spec.selector",
            "workload selector specified without labels",
        );
    }
}

fn selector_labels(out: &mut Out, path: &str, labels: &Labels) {
    for (k, v) in labels {
        let field = format!("{path}.{k}");
        if k.is_empty() {
            out.error(
                path,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') {
            out.error(
                field.clone(),
                format!("wildcard is not supported in a selector key: \"{k}={v}\""),
            );
        }
        if v.contains('*') {
            out.error(
                field.clone(),
                format!("wildcard is not supported in a selector value: \"{k}={v}\""),
            );
        }
        max_len(out, &field, v, 63);
    }
}

/// Only one way of choosing the workloads (`validateOneOfSelectorType`).
fn one_of_selector(
    out: &mut Out,
    selector: bool,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(selector)
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        out.error(
            "spec",
            "only one of selector, targetRef or targetRefs can be set",
        );
    }
}

/// The kinds a `targetRef` may name (`allowedTargetRefs`), as `group/kind` (`core` for the
/// empty group).
const TARGET_REF_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

fn target_refs(
    out: &mut Out,
    target_ref: Option<&PolicyTargetReference>,
    refs: &[PolicyTargetReference],
    check_kind: bool,
) {
    if let Some(t) = target_ref {
        one_target_ref(out, "spec.targetRef", t, check_kind);
    }
    max_items(out, "spec.targetRefs", refs.len(), 16);
    for (i, t) in refs.iter().enumerate() {
        one_target_ref(out, &format!("spec.targetRefs[{i}]"), t, check_kind);
    }
}

/// `validatePolicyTargetReference` and the CRD's patterns. `check_kind`: the webhook limits
/// the kinds (EnvoyFilter's webhook does not).
fn one_target_ref(out: &mut Out, path: &str, t: &PolicyTargetReference, check_kind: bool) {
    if t.name.is_empty() {
        out.error(format!("{path}.name"), "targetRef name must be set");
    }
    max_len(out, &format!("{path}.name"), &t.name, 253);
    if !t.namespace.is_empty() {
        out.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    if !t.group.is_empty() && !is_dns1123_subdomain(&t.group) {
        out.error(
            format!("{path}.group"),
            format!("invalid group {:?}: expected a DNS subdomain such as gateway.networking.k8s.io, or \"\" for core", t.group),
        );
    }
    let kind_ok = t.kind.len() <= 63
        && t.kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && !t.kind.ends_with('-')
        && t.kind
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if !kind_ok {
        out.error(
            format!("{path}.kind"),
            format!("invalid kind {:?}: expected a kind such as Service", t.kind),
        );
        return;
    }
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    if check_kind
        && !TARGET_REF_KINDS
            .iter()
            .any(|(g, k)| *g == group && *k == t.kind)
    {
        let allowed: Vec<String> = TARGET_REF_KINDS
            .iter()
            .map(|(g, k)| format!("{g}/{k}"))
            .collect();
        out.error(
            format!("{path}.kind"),
            format!(
                "targetRef must be to one of {} but was {group}/{}",
                allowed.join(", "),
                t.kind
            ),
        );
    }
}

/// A header name as `ValidateStrictHTTPHeaderName` (and the CRDs' `^[-_A-Za-z0-9]+$`) accept.
fn strict_header_name(out: &mut Out, path: &str, name: &str, underscore: bool) {
    if name.is_empty() {
        out.error(path, "header name cannot be empty");
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || (underscore && c == b'_'))
    {
        out.error(
            path,
            format!("header name {name:?} is not a valid header name"),
        );
    }
}

/// A Kubernetes label key (`validateTagKey`): optional DNS prefix and `/`, then a qualified
/// name.
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.len() > 253 || !p.split('.').all(is_dns1123_label) {
            return Err(format!("invalid label key {k:?}: bad DNS prefix"));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid label key {k:?}"));
    }
    if name.len() > 63 {
        return Err(format!("invalid label key {k:?} (name is too long)"));
    }
    Ok(())
}

/// `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn labels(out: &mut Out, path: &str, labels: &Labels) {
    for (k, v) in labels {
        let field = format!("{path}.{k}");
        if let Err(e) = label_key(k) {
            out.error(field.clone(), format!("invalid labels: {e}"));
        }
        if !v.is_empty() && !is_qualified_name(v) {
            out.error(field, format!("invalid labels: invalid label value {v:?}"));
        }
    }
}

// === RequestAuthentication ===

fn request_authentication(out: &mut Out, ra: &RequestAuthentication) {
    one_of_selector(
        out,
        ra.selector.is_some(),
        ra.target_ref.as_ref(),
        &ra.target_refs,
    );
    selector(out, ra.selector.as_ref());
    target_refs(out, ra.target_ref.as_ref(), &ra.target_refs, true);
    max_items(out, "spec.jwtRules", ra.jwt_rules.len(), 4096);
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        jwt_rule(out, &format!("spec.jwtRules[{i}]"), rule);
    }
}

fn jwt_rule(out: &mut Out, path: &str, rule: &JwtRule) {
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            out.error(
                format!("{path}.audiences[{i}]"),
                "audience must be non-empty string",
            );
        }
    }
    not_empty(out, &format!("{path}.issuer"), rule.issuer.as_deref());
    let issuer = rule.issuer.as_deref().unwrap_or("");
    let jwks_uri = rule.jwks_uri.as_deref().unwrap_or("");
    if issuer.is_empty() && jwks_uri.is_empty() {
        out.error(
            format!("{path}.issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if rule.jwks_uri.is_some() && rule.jwks.is_some() {
        out.error(path, "only one of jwks or jwksUri can be set");
    }
    if let Some(uri) = &rule.jwks_uri {
        let field = format!("{path}.jwksUri");
        if uri.is_empty() {
            out.error(field, "jwksUri may not be empty when set");
        } else if uri.len() > 2048 {
            max_len(out, &field, uri, 2048);
        } else {
            match go_url::parse(uri, false) {
                Err(e) => out.error(field, format!("invalid jwksUri {uri:?}: {e}")),
                Ok(u) if u.scheme != "http" && u.scheme != "https" => out.error(
                    field,
                    format!("invalid jwksUri {uri:?}: url must have scheme http:// or https://"),
                ),
                Ok(_) => {}
            }
        }
    }
    if let Some(jwks) = rule.jwks.as_deref().filter(|j| !j.is_empty()) {
        let field = format!("{path}.jwks");
        match jwks::parse(jwks) {
            Err(e) => out.error(field, format!("jwks parse error: {e}")),
            Ok(private) => {
                for i in private {
                    out.warn(
                        field.clone(),
                        format!(
                            "jwks key at index {i} contains private key material; only public \
                             keys are used for verification"
                        ),
                    );
                }
            }
        }
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            out.error(
                format!("{path}.fromHeaders[{i}].name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            out.error(
                format!("{path}.fromParams[{i}]"),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            out.error(
                format!("{path}.fromCookies[{i}]"),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, ch) in rule.output_claim_to_headers.iter().enumerate() {
        let base = format!("{path}.outputClaimToHeaders[{i}]");
        if ch.claim.is_empty() {
            out.error(
                format!("{base}.claim"),
                "outputClaimToHeaders claim must be non-empty string",
            );
        }
        if ch.header.is_empty() {
            out.error(
                format!("{base}.header"),
                "outputClaimToHeaders header must be non-empty string",
            );
        } else {
            strict_header_name(out, &format!("{base}.header"), &ch.header, true);
        }
    }
    if let Some(t) = &rule.timeout {
        out.check(format!("{path}.timeout"), names::duration(t));
    }
    max_items(
        out,
        &format!("{path}.spaceDelimitedClaims"),
        rule.space_delimited_claims.len(),
        64,
    );
    for (i, c) in rule.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            out.error(
                format!("{path}.spaceDelimitedClaims[{i}]"),
                "claim name must be non-empty string",
            );
        }
    }
    enum_value(
        out,
        &format!("{path}.presence"),
        rule.presence.as_deref(),
        &JWT_PRESENCE,
    );
}

// === Telemetry ===

fn telemetry(out: &mut Out, t: &Telemetry) {
    one_of_selector(
        out,
        t.selector.is_some(),
        t.target_ref.as_ref(),
        &t.target_refs,
    );
    selector(out, t.selector.as_ref());
    target_refs(out, t.target_ref.as_ref(), &t.target_refs, true);
    for (i, m) in t.metrics.iter().enumerate() {
        telemetry_metrics(out, &format!("spec.metrics[{i}]"), m);
    }
    if t.tracing.len() > 1 {
        out.warn(
            "spec.tracing",
            "multiple tracing is not currently supported",
        );
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        telemetry_tracing(out, &format!("spec.tracing[{i}]"), tr);
    }
    for (i, l) in t.access_logging.iter().enumerate() {
        let path = format!("spec.accessLogging[{i}]");
        if let Some(f) = &l.filter {
            cel_expression(out, &format!("{path}.filter.expression"), &f.expression);
        }
        providers(out, &path, &l.providers);
        if let Some(s) = &l.selector {
            enum_value(
                out,
                &format!("{path}.match.mode"),
                s.mode.as_deref(),
                &WORKLOAD_MODES,
            );
        }
    }
}

/// A CEL expression the proxy evaluates: one that does not compile is an error (the proxy
/// could not act on it); one that reads no Envoy attribute only a warning (Envoy evaluates it
/// to an error at run time, which sluice treats as Envoy does).
fn cel_expression(out: &mut Out, field: &str, source: &str) {
    match crate::expression::CelExpression::compile(source) {
        Err(e) => out.error(field, format!("must be a valid CEL expression: {e}")),
        Ok(expr) => {
            let unknown = expr.unknown_roots();
            if !unknown.is_empty() {
                out.warn(
                    field,
                    format!(
                        "`{}` is not an Envoy attribute (use {}); the expression fails when evaluated",
                        unknown.join("`, `"),
                        crate::expression::ENVOY_ATTRIBUTE_ROOTS.join(", ")
                    ),
                );
            }
        }
    }
}

fn providers(out: &mut Out, path: &str, providers: &[ProviderRef]) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            out.error(
                format!("{path}.providers[{i}].name"),
                "providers.name may not be empty",
            );
        }
    }
}

fn telemetry_metrics(out: &mut Out, path: &str, m: &Metrics) {
    providers(out, path, &m.providers);
    if let Some(d) = &m.reporting_interval {
        if d.0 < std::time::Duration::from_millis(1) {
            out.error(
                format!("{path}.reportingInterval"),
                "must be a valid duration greater than 1ms",
            );
        }
    }
    for (i, o) in m.overrides.iter().enumerate() {
        let base = format!("{path}.overrides[{i}]");
        for (name, to) in &o.tag_overrides {
            let field = format!("{base}.tagOverrides.{name}");
            if name.is_empty() {
                out.warn(field.clone(), "tagOverrides.name may not be empty");
            }
            enum_value(
                out,
                &format!("{field}.operation"),
                to.operation.as_deref(),
                &["UPSERT", "REMOVE"],
            );
            // The enum's default is UPSERT.
            match to.operation.as_deref().unwrap_or("UPSERT") {
                "UPSERT" if to.value.as_deref().unwrap_or("").is_empty() => out.error(
                    format!("{field}.value"),
                    "tagOverrides.value must be set when operation is UPSERT",
                ),
                "UPSERT" => cel_expression(
                    out,
                    &format!("{field}.value"),
                    to.value.as_deref().unwrap_or(""),
                ),
                "REMOVE" if to.value.is_some() => out.error(
                    format!("{field}.value"),
                    "tagOverrides.value must not be set when operation is REMOVE",
                ),
                _ => {}
            }
        }
        if let Some(sel) = &o.selector {
            let field = format!("{base}.match");
            if sel.metric.is_some() && sel.custom_metric.is_some() {
                out.error(
                    field.clone(),
                    "only one of metric or customMetric can be set",
                );
            }
            if sel.custom_metric.as_deref() == Some("") {
                out.error(
                    format!("{field}.customMetric"),
                    "customMetric may not be empty",
                );
            }
            enum_value(
                out,
                &format!("{field}.metric"),
                sel.metric.as_deref(),
                &ISTIO_METRICS,
            );
            enum_value(
                out,
                &format!("{field}.mode"),
                sel.mode.as_deref(),
                &WORKLOAD_MODES,
            );
        }
    }
}

fn telemetry_tracing(out: &mut Out, path: &str, t: &Tracing) {
    if t.providers.len() > 1 {
        out.warn(
            format!("{path}.providers"),
            "multiple providers is not currently supported",
        );
    }
    providers(out, path, &t.providers);
    if let Some(p) = t.random_sampling_percentage {
        if !(0.0..=100.0).contains(&p) {
            out.error(
                format!("{path}.randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
    }
    if let Some(s) = &t.selector {
        enum_value(
            out,
            &format!("{path}.match.mode"),
            s.mode.as_deref(),
            &WORKLOAD_MODES,
        );
    }
    for (name, tag) in &t.custom_tags {
        let field = format!("{path}.customTags.{name}");
        if name.is_empty() {
            out.error(field.clone(), "tag name may not be empty");
        }
        let set = usize::from(tag.literal.is_some())
            + usize::from(tag.environment.is_some())
            + usize::from(tag.header.is_some())
            + usize::from(tag.formatter.is_some());
        if set > 1 {
            out.error(
                field.clone(),
                "only one of literal, environment, header or formatter can be set",
            );
        }
        if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
            out.error(
                format!("{field}.literal.value"),
                "literal tag value may not be empty",
            );
        }
        if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
            out.error(
                format!("{field}.header.name"),
                "header tag name may not be empty",
            );
        }
        if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
            out.error(
                format!("{field}.environment.name"),
                "environment tag name may not be empty",
            );
        }
        if tag.formatter.as_ref().is_some_and(|f| f.value.is_empty()) {
            out.error(
                format!("{field}.formatter.value"),
                "formatter tag value may not be empty",
            );
        }
    }
}

// === WorkloadGroup ===

fn workload_group(out: &mut Out, wg: &WorkloadGroup) {
    match &wg.template {
        None => out.error("spec.template", "template is required"),
        Some(t) => workload_template(out, t),
    }
    if let Some(m) = &wg.metadata {
        labels(out, "spec.metadata.labels", &m.labels);
        max_items(out, "spec.metadata.labels", m.labels.len(), 256);
        max_items(out, "spec.metadata.annotations", m.annotations.len(), 256);
    }
    if let Some(p) = &wg.probe {
        readiness_probe(out, "spec.probe", p);
    }
}

/// The CRD's rules for `template` (the webhook leaves it alone: `address` and more are filled
/// in when a VM registers).
fn workload_template(out: &mut Out, t: &WorkloadEntry) {
    let base = "spec.template";
    max_len(out, &format!("{base}.address"), &t.address, 256);
    if let Some(path) = t.address.strip_prefix("unix://") {
        if !(path.starts_with('/') || path.starts_with('@')) {
            out.error(
                format!("{base}.address"),
                "UDS must be an absolute path or abstract socket",
            );
        } else if path.ends_with('/') {
            out.error(format!("{base}.address"), "UDS may not be a dir");
        }
        if !t.ports.is_empty() {
            out.error(format!("{base}.ports"), "UDS may not include ports");
        }
    }
    max_items(out, &format!("{base}.ports"), t.ports.len(), 128);
    for (name, port) in &t.ports {
        let field = format!("{base}.ports.{name}");
        if name.len() >= 63 || !is_dns1123_label(name) {
            out.error(field.clone(), format!("invalid port name {name:?}"));
        }
        port_range(out, &field, u64::from(*port));
    }
    max_items(out, &format!("{base}.labels"), t.labels.len(), 256);
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    max_len(
        out,
        &format!("{base}.serviceAccount"),
        &opt(&t.service_account),
        253,
    );
    max_len(out, &format!("{base}.network"), &opt(&t.network), 2048);
    max_len(out, &format!("{base}.locality"), &opt(&t.locality), 2048);
}

/// `validateReadinessProbe`.
fn readiness_probe(out: &mut Out, path: &str, p: &ReadinessProbe) {
    for (name, value) in [
        ("periodSeconds", p.period_seconds),
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        let field = format!("{path}.{name}");
        if value < 0 {
            out.error(field, format!("{name} must be non-negative"));
        } else {
            int32(out, &field, value);
        }
    }
    let set = usize::from(p.http_get.is_some())
        + usize::from(p.tcp_socket.is_some())
        + usize::from(p.exec.is_some())
        + usize::from(p.grpc.is_some());
    if set > 1 {
        out.error(
            path,
            "only one of httpGet, tcpSocket, exec or grpc can be set",
        );
    }
    if let Some(h) = &p.http_get {
        let base = format!("{path}.httpGet");
        port_range(out, &format!("{base}.port"), h.port);
        if !matches!(h.scheme.as_str(), "" | "HTTP" | "HTTPS") {
            out.error(
                format!("{base}.scheme"),
                "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
            );
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            // Kubernetes' rule for probe headers: no underscore.
            strict_header_name(
                out,
                &format!("{base}.httpHeaders[{i}].name"),
                &header.name,
                false,
            );
        }
    }
    if let Some(t) = &p.tcp_socket {
        port_range(out, &format!("{path}.tcpSocket.port"), t.port);
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            out.error(format!("{path}.exec.command"), "exec.command is required");
        }
        for (i, c) in e.command.iter().enumerate() {
            if c.is_empty() {
                out.error(
                    format!("{path}.exec.command[{i}]"),
                    "command arguments may not be empty",
                );
            }
        }
    }
    if p.grpc.is_some() {
        // Istio's webhook has no case for gRPC probes and refuses them.
        out.error(
            format!("{path}.grpc"),
            "gRPC probes are refused by Istio's validation; use httpGet, tcpSocket or exec",
        );
    } else if set == 0 {
        out.error(
            path,
            "probe needs a health check method: one of httpGet, tcpSocket or exec",
        );
    }
}

// === ProxyConfig ===

fn proxy_config(out: &mut Out, pc: &ProxyConfig) {
    selector(out, pc.selector.as_ref());
    if let Some(c) = pc.concurrency {
        if c < 0 {
            out.error(
                "spec.concurrency",
                "concurrency must be greater than or equal to 0",
            );
        } else {
            int32(out, "spec.concurrency", c);
        }
    }
    for (k, v) in &pc.environment_variables {
        max_len(out, &format!("spec.environmentVariables.{k}"), v, 2048);
    }
}

// === EnvoyFilter ===

/// Longest `proxyVersion` pattern istiod compiles; longer ones are ignored with a warning.
const MAX_PROXY_VERSION_LEN: usize = 1024;

/// `envoyfilter.ValidateEnvoyFilter` and the CRD's rules. The patch value is not checked
/// against Envoy's schema (istiod builds the xDS object for that), only its presence.
fn envoy_filter(out: &mut Out, ef: &EnvoyFilter) {
    if let Some(sel) = &ef.workload_selector {
        let path = "spec.workloadSelector.labels";
        max_items(out, path, sel.labels.len(), 256);
        for (k, v) in &sel.labels {
            let field = format!("{path}.{k}");
            if k.is_empty() {
                out.error(
                    path,
                    format!("empty key is not supported in selector: \"{k}={v}\""),
                );
            }
            if k.contains('*') || v.contains('*') {
                out.error(
                    field.clone(),
                    format!("wildcard is not supported in selector: \"{k}={v}\""),
                );
            }
            max_len(out, &field, v, 63);
        }
        if sel.labels.is_empty() {
            out.warn(
                "spec.workloadSelector",
                "Envoy filter: workload selector specified without labels, will be applied to \
                 all services in namespace",
            );
        }
        if !ef.target_refs.is_empty() {
            out.error(
                "spec",
                "only one of targetRefs or workloadSelector can be set",
            );
        }
    }
    target_refs(out, None, &ef.target_refs, false);
    int32(out, "spec.priority", ef.priority);
    for (i, cp) in ef.config_patches.iter().enumerate() {
        config_patch(out, &format!("spec.configPatches[{i}]"), cp);
    }
}

fn config_patch(out: &mut Out, path: &str, cp: &EnvoyConfigObjectPatch) {
    let m = cp.selector.as_ref();
    if let Some(m) = m {
        object_match(out, &format!("{path}.match"), m);
        if m.context.as_deref() == Some("WAYPOINT") {
            // Istio does not validate waypoint patches further yet.
            return;
        }
    }
    let apply_to = cp.apply_to.as_deref().unwrap_or("INVALID");
    if !APPLY_TO.contains(&apply_to) {
        enum_value(out, &format!("{path}.applyTo"), Some(apply_to), &APPLY_TO);
        return;
    }
    if apply_to == "INVALID" {
        out.error(format!("{path}.applyTo"), "Envoy filter: missing applyTo");
        return;
    }
    let Some(patch) = &cp.patch else {
        out.error(format!("{path}.patch"), "Envoy filter: missing patch");
        return;
    };
    enum_value(
        out,
        &format!("{path}.patch.filterClass"),
        patch.filter_class.as_deref(),
        &FILTER_CLASSES,
    );
    let op = patch.operation.as_deref().unwrap_or("INVALID");
    if !PATCH_OPERATIONS.contains(&op) {
        enum_value(
            out,
            &format!("{path}.patch.operation"),
            Some(op),
            &PATCH_OPERATIONS,
        );
        return;
    }
    if op == "INVALID" {
        out.error(
            format!("{path}.patch.operation"),
            "Envoy filter: missing patch operation",
        );
        return;
    }
    if op != "REMOVE" && patch.value.is_none() {
        out.error(
            format!("{path}.patch.value"),
            "Envoy filter: missing patch value for non-remove operation",
        );
        return;
    }
    let Some(m) = m else {
        return;
    };
    if let Some(version) = m.proxy.as_ref().map(|p| p.proxy_version.as_str()) {
        let field = format!("{path}.match.proxy.proxyVersion");
        if version.len() > MAX_PROXY_VERSION_LEN {
            out.warn(
                field,
                format!(
                    "Envoy filter: proxyVersion match exceeds {MAX_PROXY_VERSION_LEN} characters \
                     and will be ignored"
                ),
            );
        } else if !version.is_empty() {
            if let Err(e) = super::bounded_regex(version) {
                // The crate's message spans several lines with a caret diagram; keep the cause.
                let text = e.to_string();
                let cause = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or(text.lines().last().unwrap_or(""))
                    .to_string();
                out.error(
                    field,
                    format!("Envoy filter: invalid regex for proxy version: {cause}"),
                );
                return;
            }
        }
    }
    let has_object_match = m.listener.is_some()
        || m.route_configuration.is_some()
        || m.cluster.is_some()
        || m.waypoint.is_some();
    if !has_object_match {
        return;
    }
    match apply_to {
        "LISTENER" | "FILTER_CHAIN" | "NETWORK_FILTER" | "HTTP_FILTER" => {
            let Some(listener) = &m.listener else {
                out.error(
                    format!("{path}.match"),
                    "Envoy filter: applyTo for listener class objects cannot have non listener \
                     match",
                );
                return;
            };
            let Some(filter) = listener
                .filter_chain
                .as_ref()
                .and_then(|fc| fc.filter.as_ref())
            else {
                return;
            };
            let field = format!("{path}.match.listener.filterChain.filter");
            if matches!(apply_to, "LISTENER" | "FILTER_CHAIN") {
                out.warn(
                    field.clone(),
                    format!("Envoy filter: filter match has no effect when used with {apply_to}"),
                );
            }
            if filter.name.is_empty() {
                out.error(
                    format!("{field}.name"),
                    "Envoy filter: filter match has no name to match on",
                );
                return;
            }
            let Some(sub) = &filter.sub_filter else {
                return;
            };
            if apply_to != "HTTP_FILTER" {
                out.error(
                    format!("{field}.subFilter"),
                    "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
                );
            } else if !matches!(
                filter.name.as_str(),
                "envoy.filters.network.http_connection_manager" | "envoy.http_connection_manager"
            ) {
                out.error(
                    format!("{field}.subFilter"),
                    "Envoy filter: subfilter match requires filter match with \
                     envoy.filters.network.http_connection_manager",
                );
            } else if sub.name.is_empty() {
                out.error(
                    format!("{field}.subFilter.name"),
                    "Envoy filter: subfilter match has no name to match on",
                );
            }
        }
        "ROUTE_CONFIGURATION" | "VIRTUAL_HOST" | "HTTP_ROUTE"
            if m.route_configuration.is_none() =>
        {
            out.error(
                format!("{path}.match"),
                "Envoy filter: applyTo for http route class objects cannot have non route \
                 configuration match",
            );
        }
        "CLUSTER" if m.cluster.is_none() => {
            out.error(
                format!("{path}.match"),
                "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
            );
        }
        _ => {}
    }
}

/// The CRD's rules for `match`: one object type, and `waypoint` exactly when the context is
/// WAYPOINT.
fn object_match(out: &mut Out, path: &str, m: &EnvoyConfigObjectMatch) {
    enum_value(
        out,
        &format!("{path}.context"),
        m.context.as_deref(),
        &PATCH_CONTEXTS,
    );
    let set = usize::from(m.listener.is_some())
        + usize::from(m.route_configuration.is_some())
        + usize::from(m.cluster.is_some())
        + usize::from(m.waypoint.is_some());
    if set > 1 {
        out.error(
            path,
            "only one of listener, routeConfiguration, cluster or waypoint can be set",
        );
    }
    let waypoint_context = m.context.as_deref() == Some("WAYPOINT");
    if waypoint_context != m.waypoint.is_some() {
        out.error(
            path,
            "only support waypointMatch when context is WAYPOINT (and a WAYPOINT context needs \
             one)",
        );
    }
    if let Some(port) = m.waypoint.as_ref().and_then(|w| w.port_number) {
        port_range(out, &format!("{path}.waypoint.portNumber"), port);
    }
    if let Some(action) = m
        .route_configuration
        .as_ref()
        .and_then(|r| r.vhost.as_ref())
        .and_then(|v| v.route.as_ref())
        .and_then(|r| r.action.as_deref())
    {
        enum_value(
            out,
            &format!("{path}.routeConfiguration.vhost.route.action"),
            Some(action),
            &ROUTE_ACTIONS,
        );
    }
}

// === WasmPlugin ===

fn wasm_plugin(out: &mut Out, wp: &WasmPlugin) {
    one_of_selector(
        out,
        wp.selector.is_some(),
        wp.target_ref.as_ref(),
        &wp.target_refs,
    );
    selector(out, wp.selector.as_ref());
    target_refs(out, wp.target_ref.as_ref(), &wp.target_refs, true);
    wasm_module(
        out,
        "spec",
        &WasmModule {
            url: &wp.url,
            sha256: &wp.sha256,
            image_pull_policy: wp.image_pull_policy.as_deref(),
            image_pull_secret: wp.image_pull_secret.as_deref(),
            plugin_name: wp.plugin_name.as_deref(),
            fail_strategy: wp.fail_strategy.as_deref(),
            plugin_type: wp.plugin_type.as_deref(),
            vm_config: wp.vm_config.as_ref(),
        },
    );
    enum_value(out, "spec.phase", wp.phase.as_deref(), &WASM_PHASES);
    if let Some(p) = wp.priority {
        int32(out, "spec.priority", p);
    }
    traffic_selectors(out, &wp.selectors);
}

/// The fields that say which Wasm module to load and how: a [`WasmPlugin`]'s, at `spec`, and
/// a [`TrafficExtension`]'s [`WasmConfig`], at `spec.wasm`. Istio checks both alike.
struct WasmModule<'a> {
    url: &'a str,
    sha256: &'a str,
    image_pull_policy: Option<&'a str>,
    image_pull_secret: Option<&'a str>,
    plugin_name: Option<&'a str>,
    fail_strategy: Option<&'a str>,
    plugin_type: Option<&'a str>,
    vm_config: Option<&'a VmConfig>,
}

/// `validateWasmPluginURL`, `…SHA`, `…ImagePullSecret`, `…Name`, `…VMConfig` and the CRD's
/// rules for the same fields; `base` is the path of the object that holds them.
fn wasm_module(out: &mut Out, base: &str, m: &WasmModule<'_>) {
    wasm_url(out, &format!("{base}.url"), m.url);
    let hex64 = |s: &str| {
        s.len() == 64
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    if !m.sha256.is_empty() && !hex64(m.sha256) {
        out.error(
            format!("{base}.sha256"),
            "sha256 field must be 64 lower-case hex digits ([a-f0-9]{64})",
        );
    }
    if let Some(s) = m.image_pull_secret {
        let path = format!("{base}.imagePullSecret");
        not_empty(out, &path, Some(s));
        max_len(out, &path, s, 253);
    }
    if let Some(n) = m.plugin_name {
        let path = format!("{base}.pluginName");
        not_empty(out, &path, Some(n));
        max_len(out, &path, n, 256);
    }
    enum_value(
        out,
        &format!("{base}.imagePullPolicy"),
        m.image_pull_policy,
        &WASM_PULL_POLICIES,
    );
    enum_value(
        out,
        &format!("{base}.failStrategy"),
        m.fail_strategy,
        &WASM_FAIL_STRATEGIES,
    );
    enum_value(
        out,
        &format!("{base}.type"),
        m.plugin_type,
        &WASM_PLUGIN_TYPES,
    );
    if let Some(vm) = m.vm_config {
        max_items(out, &format!("{base}.vmConfig.env"), vm.env.len(), 256);
        let mut seen = BTreeSet::new();
        for (i, env) in vm.env.iter().enumerate() {
            let at = format!("{base}.vmConfig.env[{i}]");
            if env.name.is_empty() {
                out.error(format!("{at}.name"), "env name may not be empty");
            }
            max_len(out, &format!("{at}.name"), &env.name, 256);
            if !env.name.is_empty() && !seen.insert(env.name.as_str()) {
                out.error(
                    format!("{at}.name"),
                    format!("duplicate env {:?}", env.name),
                );
            }
            enum_value(
                out,
                &format!("{at}.valueFrom"),
                env.value_from.as_deref(),
                &WASM_ENV_SOURCES,
            );
            if env.value_from.as_deref() == Some("HOST") && env.value.is_some() {
                out.error(
                    format!("{at}.value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if let Some(v) = &env.value {
                max_len(out, &format!("{at}.value"), v, 2048);
            }
        }
    }
}

/// `spec.match` of a WasmPlugin or TrafficExtension (`validateWasmPluginMatch`,
/// `validateTrafficExtensionMatch`, and the CRD's enum and list-map rules).
fn traffic_selectors(out: &mut Out, selectors: &[TrafficSelector]) {
    for (i, sel) in selectors.iter().enumerate() {
        let base = format!("spec.match[{i}]");
        enum_value(
            out,
            &format!("{base}.mode"),
            sel.mode.as_deref(),
            &WASM_MODES,
        );
        let mut seen = BTreeSet::new();
        for (j, port) in sel.ports.iter().enumerate() {
            let field = format!("{base}.ports[{j}].number");
            port_range(out, &field, port.number);
            // `x-kubernetes-list-type: map` keyed by number.
            if !seen.insert(port.number) {
                out.error(field, format!("duplicate port {}", port.number));
            }
        }
    }
}

// === TrafficExtension ===

/// `ValidateTrafficExtension` and the CRD's rules.
fn traffic_extension(out: &mut Out, te: &TrafficExtension) {
    if te.wasm.is_some() == te.lua.is_some() {
        out.error("spec", "exactly one of wasm or lua must be set");
    }
    one_of_selector(out, te.selector.is_some(), None, &te.target_refs);
    selector(out, te.selector.as_ref());
    target_refs(out, None, &te.target_refs, true);
    enum_value(
        out,
        "spec.phase",
        te.phase.as_deref(),
        &TRAFFIC_EXTENSION_PHASES,
    );
    if let Some(p) = te.priority {
        int32(out, "spec.priority", p);
    }
    if let Some(lua) = &te.lua {
        let path = "spec.lua.inlineCode";
        if lua.inline_code.is_empty() {
            out.error(path, "lua.inlineCode cannot be empty");
        } else if lua.inline_code.len() > LUA_INLINE_CODE_MAX {
            out.error(
                path,
                format!(
                    "lua.inlineCode exceeds maximum size of 64KB: {} bytes, at most \
                     {LUA_INLINE_CODE_MAX}",
                    lua.inline_code.len()
                ),
            );
        }
    }
    if let Some(w) = &te.wasm {
        wasm_module(
            out,
            "spec.wasm",
            &WasmModule {
                url: &w.url,
                sha256: &w.sha256,
                image_pull_policy: w.image_pull_policy.as_deref(),
                image_pull_secret: w.image_pull_secret.as_deref(),
                plugin_name: w.plugin_name.as_deref(),
                fail_strategy: w.fail_strategy.as_deref(),
                plugin_type: w.plugin_type.as_deref(),
                vm_config: w.vm_config.as_ref(),
            },
        );
    }
    traffic_selectors(out, &te.selectors);
}

/// `validateWasmPluginURL`: a URL, or a registry path without a scheme, whose scheme Istio can
/// fetch.
fn wasm_url(out: &mut Out, path: &str, url: &str) {
    if url.is_empty() {
        out.error(path, "url field needs to be set");
        return;
    }
    // `strictParseURL`: as written, else as if `http://` were in front of it.
    let parsed = go_url::parse_strict(url)
        .or_else(|e| go_url::parse_strict(&format!("http://{url}")).map_err(|_| e));
    match parsed {
        Err(e) => out.error(path, format!("invalid url {url:?}: {e}")),
        Ok(u) if !matches!(u.scheme.as_str(), "" | "file" | "http" | "https" | "oci") => out.error(
            path,
            format!(
                "url contains unsupported scheme {:?}; use one of http, https, file, oci",
                u.scheme
            ),
        ),
        Ok(_) => {}
    }
}

/// URL parsing as Go's `net/url` does it, to the extent that its errors decide what Istio
/// accepts.
mod go_url {
    /// The parts of a URL the checks look at.
    pub(super) struct Url {
        pub scheme: String,
    }

    /// `url.Parse`.
    pub(super) fn parse(raw: &str, via_request: bool) -> Result<Url, String> {
        if raw.bytes().any(|c| c < 0x20 || c == 0x7f) {
            return Err("invalid control character in URL".into());
        }
        let (rest, fragment) = if via_request {
            (raw, None)
        } else {
            match raw.split_once('#') {
                Some((r, f)) => (r, Some(f)),
                None => (raw, None),
            }
        };
        if let Some(f) = fragment {
            escapes(f)?;
        }
        if rest.is_empty() && via_request {
            return Err("empty url".into());
        }
        if rest == "*" {
            return Ok(Url {
                scheme: String::new(),
            });
        }
        let (scheme, rest) = scheme(rest)?;
        let rest = match rest.split_once('?') {
            Some((r, _query)) => r,
            None => rest,
        };
        if !rest.starts_with('/') {
            if !scheme.is_empty() {
                // Opaque (`mailto:x`): nothing more is parsed.
                return Ok(Url { scheme });
            }
            if via_request {
                return Err("invalid URI for request".into());
            }
            let first = rest.split('/').next().unwrap_or("");
            if first.contains(':') {
                return Err("first path segment in URL cannot contain colon".into());
            }
        }
        let mut path = rest;
        if (!scheme.is_empty() || !via_request && !rest.starts_with("///"))
            && rest.starts_with("//")
        {
            let after = &rest[2..];
            let (authority, p) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            };
            authority_ok(authority)?;
            path = p;
        }
        escapes(path)?;
        Ok(Url { scheme })
    }

    /// `url.ParseRequestURI` then `url.Parse`, as Istio's `strictParseURL` requires.
    pub(super) fn parse_strict(raw: &str) -> Result<Url, String> {
        let u = parse(raw, true)?;
        parse(raw, false)?;
        Ok(u)
    }

    /// `getScheme`: the scheme, lower-cased, and the rest.
    fn scheme(raw: &str) -> Result<(String, &str), String> {
        for (i, c) in raw.char_indices() {
            match c {
                'a'..='z' | 'A'..='Z' => {}
                '0'..='9' | '+' | '-' | '.' if i > 0 => {}
                ':' if i == 0 => return Err("missing protocol scheme".into()),
                ':' => return Ok((raw[..i].to_ascii_lowercase(), &raw[i + 1..])),
                _ => return Ok((String::new(), raw)),
            }
        }
        Ok((String::new(), raw))
    }

    fn authority_ok(authority: &str) -> Result<(), String> {
        let host = match authority.rfind('@') {
            Some(i) => {
                let userinfo = &authority[..i];
                if !userinfo
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&c))
                {
                    return Err("invalid userinfo".into());
                }
                escapes(userinfo)?;
                &authority[i + 1..]
            }
            None => authority,
        };
        let port = if let Some(inner) = host.strip_prefix('[') {
            let Some(end) = inner.find(']') else {
                return Err("missing ']' in host".into());
            };
            &inner[end + 1..]
        } else {
            match host.rfind(':') {
                Some(i) => &host[i..],
                None => "",
            }
        };
        let digits = |p: &str| p.bytes().all(|c| c.is_ascii_digit());
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(digits)) {
            return Err(format!("invalid port {port:?} after host"));
        }
        let name = &host[..host.len() - port.len()];
        if name.bytes().any(|c| {
            c < 0x80 && !(c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]<>\"%".contains(&c))
        }) {
            return Err("invalid character in host name".into());
        }
        escapes(name)
    }

    /// Every `%` starts a two-digit hex escape.
    fn escapes(s: &str) -> Result<(), String> {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let ok =
                    i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
                if !ok {
                    let end = (i + 3).min(b.len());
                    return Err(format!(
                        "invalid URL escape {:?}",
                        String::from_utf8_lossy(&b[i..end])
                    ));
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// A JSON Web Key Set (or a single key), as the JWK library Istio uses parses it.
mod jwks {
    use serde_json::{Map, Value};

    /// Parses `text`; on success, the indexes of the keys that hold private material.
    pub(super) fn parse(text: &str) -> Result<Vec<usize>, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("expected a JSON object".into());
        };
        let keys: Vec<&Map<String, Value>> = match obj.get("keys") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    k.as_object()
                        .ok_or_else(|| format!("keys[{i}] is not an object"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"keys\" must be a list".into()),
            None => vec![&obj],
        };
        let mut private = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let kty = key.get("kty").and_then(Value::as_str).unwrap_or("");
            let required: &[&str] = match kty {
                "RSA" => &["n", "e"],
                "EC" => &["crv", "x", "y"],
                "OKP" => &["crv", "x"],
                "oct" => &["k"],
                "" => return Err(format!("key {i}: missing \"kty\"")),
                other => return Err(format!("key {i}: invalid key type {other:?}")),
            };
            for field in required {
                if !key.get(*field).is_some_and(Value::is_string) {
                    return Err(format!("key {i}: {kty} key needs {field:?}"));
                }
            }
            if kty == "oct" || key.contains_key("d") {
                private.push(i);
            }
        }
        Ok(private)
    }
}
