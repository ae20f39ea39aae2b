//! The Telemetry API (`telemetry.istio.io`) resolved for one proxy: which Telemetry resources
//! apply to it and what their merge says about access logging, metrics and tracing.
//!
//! Selection and merging follow istiod (`pilot/pkg/model/telemetry.go`):
//!
//! - the root namespace's Telemetry without a selector applies mesh-wide, then the proxy's own
//!   namespace's Telemetry without a selector, then every Telemetry of the proxy's namespace
//!   whose `selector.matchLabels` the proxy's labels contain, in creation order. Later entries
//!   override earlier ones. Only the first selector-less Telemetry of a namespace counts (as
//!   istiod's `namespaceWideTelemetryConfig`); a selector in the root namespace selects only
//!   workloads of the root namespace.
//! - `targetRef(s)` attach a Telemetry to a Kubernetes Gateway API gateway or a waypoint's
//!   service; sluice serves neither, so such a Telemetry applies to no proxy (a warning says so).
//! - access logging (`mergeLogs`): the providers in scope are those named by the most specific
//!   entry that names any (else the mesh's default providers, none in sluice); every entry of
//!   a matching `match.mode` then sets, for each provider it names (or inherits from the entry
//!   before it), enabled-with-the-filter-of-its-last-naming-entry or disabled. No access logging
//!   entry at all leaves the mesh config's access log (`accessLogFile`) in charge.
//! - metrics (`mergeMetrics`): overrides are applied in order per metric and mode; `disabled`
//!   and each tag override replace earlier ones (a deep merge); `ALL_METRICS` disabled switches
//!   the mode off until a later override of that mode enables any metric.
//! - tracing (`Tracing`): a shallow merge per field, each entry setting the fields it has for
//!   its `match.mode`; no provider means disabled.
//!
//! sluice's built-in providers are Istio's defaults: `envoy` (file access log on the proxy's
//! standard output, Istio's default TEXT format) and `prometheus` (the `/stats/prometheus`
//! metrics). Other extension providers are not configured in sluice: entries naming only them
//! act on nothing, with a warning (SLU0004).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use sluice_api::expression::CelExpression;
use sluice_api::networking::Labels;
use sluice_api::resource::{Diagnostic, Severity};
use sluice_api::unenforced::{
    AccessLogging, CustomTag, MetricSelector, ModeSelector, Telemetry, Tracing,
};
use sluice_api::{Resource, Spec};

use crate::registry::labels_subset;

/// The built-in access log provider: a file log on the proxy's standard output.
pub const ENVOY_PROVIDER: &str = "envoy";
/// The built-in metrics provider: Istio's Prometheus metrics.
pub const PROMETHEUS_PROVIDER: &str = "prometheus";

/// Which side of the traffic a setting is for (`WorkloadMode`): a sidecar's outbound side and
/// a gateway are the client; a sidecar's inbound side is the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WorkloadMode {
    Client,
    Server,
}

impl WorkloadMode {
    /// The modes a `match.mode` (`CLIENT`, `SERVER`, `CLIENT_AND_SERVER` or absent) covers.
    fn covered(mode: Option<&str>) -> &'static [WorkloadMode] {
        match mode {
            Some("CLIENT") => &[WorkloadMode::Client],
            Some("SERVER") => &[WorkloadMode::Server],
            _ => &[WorkloadMode::Client, WorkloadMode::Server],
        }
    }
}

/// Per-mode pair of settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ByMode<T> {
    pub client: T,
    pub server: T,
}

impl<T> ByMode<T> {
    /// The setting for `mode`.
    pub fn get(&self, mode: WorkloadMode) -> &T {
        match mode {
            WorkloadMode::Client => &self.client,
            WorkloadMode::Server => &self.server,
        }
    }

    fn get_mut(&mut self, mode: WorkloadMode) -> &mut T {
        match mode {
            WorkloadMode::Client => &mut self.client,
            WorkloadMode::Server => &mut self.server,
        }
    }
}

/// The Telemetry API resolved for one proxy. The default (no Telemetry applies) changes
/// nothing: the mesh config's access log, every metric with Istio's labels, no tracing section.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TelemetryPolicy {
    /// The Telemetry resources that apply, least specific first (`ns/name`).
    pub applied: Vec<String>,
    pub access_logging: ByMode<AccessLogPolicy>,
    pub metrics: ByMode<MetricsPolicy>,
    /// `None` when no Telemetry has a tracing section (the mesh's tracing settings apply).
    pub tracing: Option<ByMode<TracingPolicy>>,
}

/// Access logging for one mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub enum AccessLogPolicy {
    /// No Telemetry configures access logging: the mesh config's (`accessLogFile`) applies.
    #[default]
    MeshConfig,
    /// The Telemetry API decides: each provider in scope, enabled (with an optional filter) or
    /// disabled. Empty means the mesh config's log applies, as in istiod (no provider resolved).
    Providers(Vec<LogProvider>),
}

/// One access log provider of a mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogProvider {
    pub name: Arc<str>,
    pub disabled: bool,
    /// `filter.expression`: a line is written only when it evaluates to `true`.
    pub filter: Option<CelExpression>,
}

/// What a proxy does about access logging for one mode.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogDecision<'a> {
    /// The mesh config's access log, as without the Telemetry API.
    MeshConfig,
    /// No line for this mode.
    Off,
    /// The built-in `envoy` provider, with its filter.
    Envoy { filter: Option<&'a CelExpression> },
}

impl AccessLogPolicy {
    /// What the data path does: the `envoy` provider's setting when it is in scope; off when
    /// every provider in scope is disabled or one sluice does not have.
    pub fn decision(&self) -> AccessLogDecision<'_> {
        let AccessLogPolicy::Providers(providers) = self else {
            return AccessLogDecision::MeshConfig;
        };
        if providers.is_empty() {
            return AccessLogDecision::MeshConfig;
        }
        match providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(ENVOY_PROVIDER))
        {
            Some(p) if !p.disabled => AccessLogDecision::Envoy {
                filter: p.filter.as_ref(),
            },
            _ => AccessLogDecision::Off,
        }
    }
}

/// One standard metric (`MetricSelector.IstioMetric`), or a custom one by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricName {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
    Custom(String),
}

impl MetricName {
    /// Every standard metric (what `ALL_METRICS` stands for).
    pub const STANDARD: [MetricName; 10] = [
        MetricName::RequestCount,
        MetricName::RequestDuration,
        MetricName::RequestSize,
        MetricName::ResponseSize,
        MetricName::TcpOpenedConnections,
        MetricName::TcpClosedConnections,
        MetricName::TcpSentBytes,
        MetricName::TcpReceivedBytes,
        MetricName::GrpcRequestMessages,
        MetricName::GrpcResponseMessages,
    ];

    /// The `IstioMetric` name (`REQUEST_COUNT`), or the custom metric's.
    pub fn as_str(&self) -> &str {
        match self {
            MetricName::RequestCount => "REQUEST_COUNT",
            MetricName::RequestDuration => "REQUEST_DURATION",
            MetricName::RequestSize => "REQUEST_SIZE",
            MetricName::ResponseSize => "RESPONSE_SIZE",
            MetricName::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            MetricName::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            MetricName::TcpSentBytes => "TCP_SENT_BYTES",
            MetricName::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            MetricName::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            MetricName::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
            MetricName::Custom(name) => name,
        }
    }

    fn parse(enum_name: &str) -> Option<MetricName> {
        Some(match enum_name {
            "REQUEST_COUNT" => MetricName::RequestCount,
            "REQUEST_DURATION" => MetricName::RequestDuration,
            "REQUEST_SIZE" => MetricName::RequestSize,
            "RESPONSE_SIZE" => MetricName::ResponseSize,
            "TCP_OPENED_CONNECTIONS" => MetricName::TcpOpenedConnections,
            "TCP_CLOSED_CONNECTIONS" => MetricName::TcpClosedConnections,
            "TCP_SENT_BYTES" => MetricName::TcpSentBytes,
            "TCP_RECEIVED_BYTES" => MetricName::TcpReceivedBytes,
            "GRPC_REQUEST_MESSAGES" => MetricName::GrpcRequestMessages,
            "GRPC_RESPONSE_MESSAGES" => MetricName::GrpcResponseMessages,
            _ => return None,
        })
    }

    /// The metrics a `match` selects (`istiod`'s `getMatches`): none, or `ALL_METRICS`, is all.
    fn selected(selector: Option<&MetricSelector>) -> Vec<MetricName> {
        let selector = selector.cloned().unwrap_or_default();
        if let Some(custom) = selector.custom_metric {
            return vec![MetricName::Custom(custom)];
        }
        match selector.metric.as_deref().and_then(MetricName::parse) {
            Some(m) => vec![m],
            None => MetricName::STANDARD.to_vec(),
        }
    }
}

/// A string, so that maps keyed by metric serialize as JSON objects (the config dump).
impl Serialize for MetricName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A metric's label edit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum TagEdit {
    /// `operation: REMOVE`: the label is not reported.
    Remove,
    /// `value: <CEL>`: the label is added, or its standard value replaced, by the expression's
    /// value for the request.
    Upsert(CelExpression),
}

/// The overrides of one metric in one mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricOverride {
    pub disabled: bool,
    /// Label name → edit, sorted by name (deterministic output, as istiod sorts them).
    pub tags: BTreeMap<String, TagEdit>,
}

/// Metrics for one mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsPolicy {
    /// No Istio metric is reported in this mode (`ALL_METRICS` disabled, or the Prometheus
    /// provider out of scope).
    pub disabled: bool,
    /// Metric → its overrides; a metric absent here is reported as without the Telemetry API.
    pub overrides: BTreeMap<MetricName, MetricOverride>,
}

impl MetricsPolicy {
    /// Whether nothing changes the standard metrics (the data path's fast path).
    pub fn is_default(&self) -> bool {
        !self.disabled && self.overrides.is_empty()
    }

    /// Whether `metric` is reported.
    pub fn reports(&self, metric: &MetricName) -> bool {
        !self.disabled && !self.overrides.get(metric).is_some_and(|o| o.disabled)
    }

    /// The label edits of `metric`, if any.
    pub fn tags(&self, metric: &MetricName) -> Option<&BTreeMap<String, TagEdit>> {
        self.overrides
            .get(metric)
            .map(|o| &o.tags)
            .filter(|t| !t.is_empty())
    }
}

/// Tracing for one mode, as the Telemetry API resolves it (istiod's `TracingSpec`). The span
/// exporter reads this: `provider` names a mesh `extensionProviders` entry (Zipkin,
/// OpenTelemetry, …); `disabled` is true when span reporting is off or no provider is named;
/// `random_sampling_percentage` `None` leaves the mesh/proxy default; `custom_tags` are added to
/// every span (literal, request header, or environment variable of the proxy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingPolicy {
    pub provider: Option<String>,
    pub disabled: bool,
    pub random_sampling_percentage: Option<f64>,
    pub custom_tags: BTreeMap<String, CustomTag>,
    pub use_request_id_for_trace_sampling: bool,
    pub enable_istio_tags: bool,
    pub disable_context_propagation: bool,
}

impl Default for TracingPolicy {
    /// istiod's starting point: request-id sampling and Istio tags on, nothing else.
    fn default() -> Self {
        TracingPolicy {
            provider: None,
            disabled: false,
            random_sampling_percentage: None,
            custom_tags: BTreeMap::new(),
            use_request_id_for_trace_sampling: true,
            enable_istio_tags: true,
            disable_context_propagation: false,
        }
    }
}

/// A Telemetry resource and its spec.
type Applied<'a> = (&'a Resource, &'a Telemetry);

impl TelemetryPolicy {
    /// Resolves the Telemetry resources of `resources` (in creation order) for a proxy in
    /// `namespace` with `labels`. Diagnostics are warnings about what applies to nothing.
    pub fn compile(
        resources: &[Resource],
        namespace: &str,
        labels: &Labels,
        root_namespace: &str,
    ) -> (TelemetryPolicy, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let telemetries: Vec<Applied<'_>> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Telemetry(t) => Some((r, &**t)),
                _ => None,
            })
            .collect();
        let namespace_wide = |ns: &str| {
            telemetries
                .iter()
                .copied()
                .find(|(r, t)| r.meta.namespace == ns && !has_selector(t) && !has_target_refs(t))
        };
        let mut chain: Vec<Applied<'_>> = Vec::new();
        chain.extend(namespace_wide(root_namespace));
        if namespace != root_namespace {
            chain.extend(namespace_wide(namespace));
        }
        for &(res, t) in &telemetries {
            if res.meta.namespace != namespace {
                continue;
            }
            if has_target_refs(t) {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    "spec.targetRefs",
                    "SLU0004: a Telemetry attached with targetRef(s) applies to Gateway API \
                     gateways and waypoints, which sluice does not serve; it applies to no proxy",
                ));
                continue;
            }
            if has_selector(t)
                && t.selector
                    .as_ref()
                    .is_some_and(|s| labels_subset(&s.match_labels, labels))
            {
                chain.push((res, t));
            }
        }
        for &(res, t) in &chain {
            provider_warnings(res, t, &mut diags);
        }
        let policy = TelemetryPolicy {
            applied: chain.iter().map(|(r, _)| r.key()).collect(),
            access_logging: ByMode {
                client: merge_logs(&chain, WorkloadMode::Client),
                server: merge_logs(&chain, WorkloadMode::Server),
            },
            metrics: merge_metrics(&chain),
            tracing: merge_tracing(&chain),
        };
        (policy, diags)
    }
}

fn has_selector(t: &Telemetry) -> bool {
    t.selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

fn has_target_refs(t: &Telemetry) -> bool {
    t.target_ref.is_some() || !t.target_refs.is_empty()
}

fn mode_matches(selector: Option<&ModeSelector>, mode: WorkloadMode) -> bool {
    WorkloadMode::covered(selector.and_then(|s| s.mode.as_deref())).contains(&mode)
}

fn names(providers: &[sluice_api::unenforced::ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

/// istiod's `mergeLogs` for one mode.
fn merge_logs(chain: &[Applied<'_>], mode: WorkloadMode) -> AccessLogPolicy {
    let levels: Vec<&[AccessLogging]> = chain
        .iter()
        .map(|(_, t)| t.access_logging.as_slice())
        .filter(|l| !l.is_empty())
        .collect();
    if levels.is_empty() {
        return AccessLogPolicy::MeshConfig;
    }
    // The providers in scope: those the most specific level names (for this mode).
    let mut in_scope: Vec<String> = Vec::new();
    let mut filters: BTreeMap<String, Option<CelExpression>> = BTreeMap::new();
    for level in &levels {
        let mut named = Vec::new();
        for entry in level.iter() {
            if !mode_matches(entry.selector.as_ref(), mode) {
                continue;
            }
            for provider in names(&entry.providers) {
                filters.insert(provider.clone(), filter_of(entry));
                named.push(provider);
            }
        }
        if !named.is_empty() {
            in_scope = named;
        }
    }
    let mut resolved: BTreeMap<String, LogProvider> = BTreeMap::new();
    let mut parent: Vec<String> = Vec::new();
    for level in &levels {
        for entry in level.iter() {
            let mut providers = names(&entry.providers);
            if providers.is_empty() {
                providers = parent.clone();
            }
            parent = providers.clone();
            if !mode_matches(entry.selector.as_ref(), mode) {
                continue;
            }
            for provider in providers {
                if !in_scope.contains(&provider) {
                    continue;
                }
                let disabled = entry.disabled == Some(true);
                let filter = if disabled {
                    None
                } else {
                    filters.get(&provider).cloned().flatten()
                };
                resolved.insert(
                    provider.clone(),
                    LogProvider {
                        name: Arc::from(provider.as_str()),
                        disabled,
                        filter,
                    },
                );
            }
        }
    }
    AccessLogPolicy::Providers(resolved.into_values().collect())
}

/// The compiled filter of an entry; validation refused those that do not compile.
fn filter_of(entry: &AccessLogging) -> Option<CelExpression> {
    let f = entry.filter.as_ref()?;
    CelExpression::compile(&f.expression).ok()
}

/// istiod's `mergeMetrics`, for the Prometheus provider.
fn merge_metrics(chain: &[Applied<'_>]) -> ByMode<MetricsPolicy> {
    let entries: Vec<_> = chain.iter().flat_map(|(_, t)| t.metrics.iter()).collect();
    let mut out = ByMode::<MetricsPolicy>::default();
    // Providers named by a later entry replace the earlier ones; none named means prometheus.
    let mut in_scope = vec![PROMETHEUS_PROVIDER.to_string()];
    for m in &entries {
        let named = names(&m.providers);
        if !named.is_empty() {
            in_scope = named;
        }
    }
    if !in_scope
        .iter()
        .any(|p| p.eq_ignore_ascii_case(PROMETHEUS_PROVIDER))
    {
        out.client.disabled = true;
        out.server.disabled = true;
        return out;
    }
    let mut parent = vec![PROMETHEUS_PROVIDER.to_string()];
    let mut all_disabled = ByMode::<bool>::default();
    for m in entries {
        let mut providers = names(&m.providers);
        if providers.is_empty() {
            providers = parent.clone();
        }
        parent = providers.clone();
        if !providers
            .iter()
            .any(|p| p.eq_ignore_ascii_case(PROMETHEUS_PROVIDER))
        {
            continue;
        }
        for o in &m.overrides {
            let selector = o.selector.as_ref();
            let modes = WorkloadMode::covered(selector.and_then(|s| s.mode.as_deref()));
            let is_all = selector.is_none_or(|s| {
                s.custom_metric.is_none() && s.metric.as_deref().is_none_or(|m| m == "ALL_METRICS")
            });
            if is_all && o.disabled == Some(true) {
                for &mode in modes {
                    *all_disabled.get_mut(mode) = true;
                }
                continue;
            }
            for &mode in modes {
                *all_disabled.get_mut(mode) = false;
                let policy = out.get_mut(mode);
                for metric in MetricName::selected(selector) {
                    let entry = policy.overrides.entry(metric).or_default();
                    if let Some(d) = o.disabled {
                        entry.disabled = d;
                    }
                    for (tag, to) in &o.tag_overrides {
                        let edit = match to.operation.as_deref() {
                            Some("REMOVE") => Some(TagEdit::Remove),
                            _ => to
                                .value
                                .as_deref()
                                .and_then(|v| CelExpression::compile(v).ok())
                                .map(TagEdit::Upsert),
                        };
                        if let Some(edit) = edit {
                            entry.tags.insert(tag.clone(), edit);
                        }
                    }
                }
            }
        }
    }
    for mode in [WorkloadMode::Client, WorkloadMode::Server] {
        let policy = out.get_mut(mode);
        // An override that changes nothing is no override: keeps the data path's fast path.
        policy
            .overrides
            .retain(|_, o| o.disabled || !o.tags.is_empty());
        if *all_disabled.get(mode) {
            policy.disabled = true;
        }
    }
    out
}

/// istiod's `Tracing`: a shallow merge, field by field, per mode.
fn merge_tracing(chain: &[Applied<'_>]) -> Option<ByMode<TracingPolicy>> {
    let entries: Vec<&Tracing> = chain.iter().flat_map(|(_, t)| t.tracing.iter()).collect();
    if entries.is_empty() {
        return None;
    }
    let mut out = ByMode::<TracingPolicy>::default();
    for t in entries {
        for &mode in WorkloadMode::covered(t.selector.as_ref().and_then(|s| s.mode.as_deref())) {
            let spec = out.get_mut(mode);
            if let Some(p) = t.providers.first() {
                spec.provider = Some(p.name.clone());
            }
            if let Some(d) = t.disable_span_reporting {
                spec.disabled = d;
            }
            if !t.custom_tags.is_empty() {
                spec.custom_tags = t.custom_tags.clone();
            }
            if let Some(p) = t.random_sampling_percentage {
                spec.random_sampling_percentage = Some(p);
            }
            if let Some(v) = t.use_request_id_for_trace_sampling {
                spec.use_request_id_for_trace_sampling = v;
            }
            if let Some(v) = t.enable_istio_tags {
                spec.enable_istio_tags = v;
            }
            if let Some(v) = t.disable_context_propagation {
                spec.disable_context_propagation = v;
            }
        }
    }
    // No provider named anywhere: the mesh's `defaultProviders.tracing` applies (see
    // `crate::tracing::with_telemetry`), or nothing when it has none.
    Some(out)
}

/// Warns about providers sluice does not have, for access logging and metrics (tracing
/// providers name the mesh's extension providers, which the span exporter resolves).
fn provider_warnings(res: &Resource, t: &Telemetry, diags: &mut Vec<Diagnostic>) {
    for (i, l) in t.access_logging.iter().enumerate() {
        for (j, p) in l.providers.iter().enumerate() {
            if !p.name.eq_ignore_ascii_case(ENVOY_PROVIDER) {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    format!("spec.accessLogging[{i}].providers[{j}].name"),
                    format!(
                        "SLU0004: access log provider {:?} is not one sluice has (only the \
                         built-in `envoy`, on the proxy's standard output); nothing is logged \
                         through it",
                        p.name
                    ),
                ));
            }
        }
    }
    for (i, m) in t.metrics.iter().enumerate() {
        for (j, p) in m.providers.iter().enumerate() {
            if !p.name.eq_ignore_ascii_case(PROMETHEUS_PROVIDER) {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    format!("spec.metrics[{i}].providers[{j}].name"),
                    format!(
                        "SLU0004: metrics provider {:?} is not one sluice has (only the \
                         built-in `prometheus`)",
                        p.name
                    ),
                ));
            }
        }
        for (k, o) in m.overrides.iter().enumerate() {
            if o.selector
                .as_ref()
                .is_some_and(|s| s.custom_metric.is_some())
            {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    format!("spec.metrics[{i}].overrides[{k}].match.customMetric"),
                    "SLU0004: sluice reports only Istio's standard metrics; an override of a \
                     custom metric changes nothing",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
