//! `sluice analyze`: whole-config checks in the manner of `istioctl analyze`, with Istio's
//! message codes, levels and texts (`pkg/config/analysis/msg/messages.yaml`), so users can
//! search for them.
//!
//! Each analyzer is a pure function of the decoded, valid resources; validation problems from
//! the webhook-equivalent checks become IST0106 (errors) and IST0133 (warnings) through
//! [`from_diagnostic`]. Problems Istio has no code for, but that sluice can prove, use codes of
//! their own in the `SLU` range (see [`CODES`]).
//!
//! Like istioctl, the analyzers read the Pods and Namespaces of the input (proxies ignore
//! them), and assume an ingress gateway Pod labelled `istio: ingressgateway` in istio-system,
//! with its Service `istio-ingressgateway` (ports 80, 443, 31400, 15443) unless the files define
//! one (see `workloads`). Sluice's own config folders usually hold no Pods: selectors are then
//! also matched with what the config declares (WorkloadEntries, endpoints, the Services that
//! select workloads), rather than reported as matching nothing. See [`SKIPPED`] for what
//! differs from Istio.

mod authz;
mod certificates;
mod destinations;
mod gateways;
mod lookup;
mod pem;
mod routes;
mod rules;
mod service_entries;
mod sidecars;
mod telemetry;
mod workloads;

use std::fmt;

use serde::Serialize;

pub use certificates::{certificate_file_diagnostics, certificate_file_messages, FileProblem};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

/// How bad a [`Message`] is. Sorted Error first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    /// `Error`, `Warning` or `Info`, as istioctl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message type: its code, name, level and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Code {
    /// `IST0101`, or `SLU0001` for sluice's own.
    pub code: &'static str,
    /// `ReferencedResourceNotFound`.
    pub name: &'static str,
    pub level: Level,
    pub description: &'static str,
}

/// IST0101.
pub const REFERENCED_RESOURCE_NOT_FOUND: Code = Code {
    code: "IST0101",
    name: "ReferencedResourceNotFound",
    level: Level::Error,
    description: "A resource being referenced does not exist.",
};
/// IST0106.
pub const SCHEMA_VALIDATION_ERROR: Code = Code {
    code: "IST0106",
    name: "SchemaValidationError",
    level: Level::Error,
    description: "The resource has a schema validation error.",
};
/// IST0109.
pub const CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS: Code = Code {
    code: "IST0109",
    name: "ConflictingMeshGatewayVirtualServiceHosts",
    level: Level::Error,
    description: "Conflicting hosts on VirtualServices associated with mesh gateway",
};
/// IST0112.
pub const VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED: Code = Code {
    code: "IST0112",
    name: "VirtualServiceDestinationPortSelectorRequired",
    level: Level::Error,
    description: "A VirtualService routes to a service with more than one port exposed, but does not specify which to use.",
};
/// IST0128.
pub const NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL: Code = Code {
    code: "IST0128",
    name: "NoServerCertificateVerificationDestinationLevel",
    level: Level::Warning,
    description: "No caCertificates are set in DestinationRule, this results in no verification of presented server certificate.",
};
/// IST0129.
pub const NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL: Code = Code {
    code: "IST0129",
    name: "NoServerCertificateVerificationPortLevel",
    level: Level::Warning,
    description: "No caCertificates are set in DestinationRule, this results in no verification of presented server certificate for traffic to a given port.",
};
/// IST0130.
pub const VIRTUAL_SERVICE_UNREACHABLE_RULE: Code = Code {
    code: "IST0130",
    name: "VirtualServiceUnreachableRule",
    level: Level::Warning,
    description:
        "A VirtualService rule will never be used because a previous rule uses the same match.",
};
/// IST0131.
pub const VIRTUAL_SERVICE_INEFFECTIVE_MATCH: Code = Code {
    code: "IST0131",
    name: "VirtualServiceIneffectiveMatch",
    level: Level::Info,
    description: "A VirtualService rule match duplicates a match in a previous rule.",
};
/// IST0132.
pub const VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY: Code = Code {
    code: "IST0132",
    name: "VirtualServiceHostNotFoundInGateway",
    level: Level::Warning,
    description: "Host defined in VirtualService not found in Gateway.",
};
/// IST0133.
pub const SCHEMA_WARNING: Code = Code {
    code: "IST0133",
    name: "SchemaWarning",
    level: Level::Warning,
    description: "The resource has a schema validation warning.",
};
/// IST0134.
pub const SERVICE_ENTRY_ADDRESSES_REQUIRED: Code = Code {
    code: "IST0134",
    name: "ServiceEntryAddressesRequired",
    level: Level::Warning,
    description: "Virtual IP addresses are required for ports serving TCP (or unset) protocol",
};
/// IST0145.
pub const CONFLICTING_GATEWAYS: Code = Code {
    code: "IST0145",
    name: "ConflictingGateways",
    level: Level::Error,
    description: "Gateway should not have the same selector, port and matched hosts of server",
};
/// IST0159.
pub const CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS: Code = Code {
    code: "IST0159",
    name: "ConflictingTelemetryWorkloadSelectors",
    level: Level::Error,
    description: "A Telemetry resource selects the same workloads as another Telemetry resource (workloads are the Pods and WorkloadEntries the config declares).",
};
/// IST0161.
pub const INVALID_GATEWAY_CREDENTIAL: Code = Code {
    code: "IST0161",
    name: "InvalidGatewayCredential",
    level: Level::Error,
    description: "The credential provided for the Gateway resource is invalid",
};
/// IST0162.
pub const GATEWAY_PORT_NOT_DEFINED_ON_SERVICE: Code = Code {
    code: "IST0162",
    name: "GatewayPortNotDefinedOnService",
    level: Level::Warning,
    description: "Gateway port not exposed by service",
};
/// IST0173.
pub const DESTINATION_RULE_SUBSET_NOT_SELECT_PODS: Code = Code {
    code: "IST0173",
    name: "DestinationRuleSubsetNotSelectPods",
    level: Level::Error,
    description:
        "A subset of a DestinationRule selects no workload; requests routed to it get 503 UH.",
};
/// IST0174.
pub const UNKNOWN_DESTINATION_RULE_HOST: Code = Code {
    code: "IST0174",
    name: "UnknownDestinationRuleHost",
    level: Level::Warning,
    description: "The host of a DestinationRule matches no service in the registry.",
};
/// IST0177.
pub const CONFLICTING_SERVICE_ENTRY_PROTOCOL: Code = Code {
    code: "IST0177",
    name: "ConflictingServiceEntryProtocol",
    level: Level::Warning,
    description: "Several ServiceEntries visible in one namespace give the same host and port different protocols.",
};
/// SLU0001: sluice's own; Istio has no analyzer for it (seed 004).
pub const DESTINATION_PORT_PINNED_TO_ONLY_SERVICE_PORT: Code = Code {
    code: "SLU0001",
    name: "DestinationPortPinnedToOnlyServiceEntryPort",
    level: Level::Warning,
    description: "An HTTP route names a ServiceEntry host without a port, and the ServiceEntry declares a single port that is not the protocol's usual one: every request for the host goes to that port, whatever port the client called.",
};

/// SLU0002: sluice's own. `istioctl analyze` cannot see the proxy's files; `sluice analyze`
/// runs where they are (or are meant to be).
pub const CERTIFICATE_FILE_UNUSABLE: Code = Code {
    code: "SLU0002",
    name: "CertificateFileUnusable",
    level: Level::Warning,
    description: "A Gateway server or DestinationRule names a certificate, key or CA file that does not exist, cannot be read, or is not a regular file on this machine: the gateway is not ready (or TLS origination fails) until it can be read.",
};

/// SLU0003: sluice's own. Valid Istio config of a kind sluice validates but does not enforce
/// (WorkloadGroup, …, Gateway API Gateways): nothing is wrong with it for
/// Istio, so it is information, not a warning.
pub const KIND_NOT_ENFORCED: Code = Code {
    code: "SLU0003",
    name: "KindNotEnforced",
    level: Level::Info,
    description: "A resource of a kind Istio knows and sluice validates but does not enforce (WorkloadGroup, ProxyConfig, EnvoyFilter, WasmPlugin, TrafficExtension, Gateway API Gateways): what it asks for does not happen with sluice.",
};

/// SLU0004: sluice's own, as SLU0003 for a field.
pub const FIELD_NOT_ENFORCED: Code = Code {
    code: "SLU0004",
    name: "FieldNotEnforced",
    level: Level::Info,
    description: "A field Istio accepts and sluice validates but does not act on yet (e.g. DestinationRule zoneAwareLbSetting or warmup, Sidecar ingress tls, VirtualService corsPolicy): the proxy behaves as if it were not set.",
};

/// IST0110.
pub const CONFLICTING_SIDECAR_WORKLOAD_SELECTORS: Code = Code {
    code: "IST0110",
    name: "ConflictingSidecarWorkloadSelectors",
    level: Level::Error,
    description: "A Sidecar resource selects the same workloads as another Sidecar resource (workloads are the Pods and WorkloadEntries the config declares).",
};
/// IST0111.
pub const MULTIPLE_SIDECARS_WITHOUT_SELECTORS: Code = Code {
    code: "IST0111",
    name: "MultipleSidecarsWithoutWorkloadSelectors",
    level: Level::Error,
    description: "More than one Sidecar resource in a namespace has no workload selector.",
};

/// Every code `sluice analyze` can report, in code order.
pub const CODES: &[Code] = &[
    REFERENCED_RESOURCE_NOT_FOUND,
    SCHEMA_VALIDATION_ERROR,
    CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
    VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
    NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
    NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL,
    VIRTUAL_SERVICE_UNREACHABLE_RULE,
    VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
    SCHEMA_WARNING,
    SERVICE_ENTRY_ADDRESSES_REQUIRED,
    CONFLICTING_GATEWAYS,
    CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS,
    INVALID_GATEWAY_CREDENTIAL,
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
    DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
    UNKNOWN_DESTINATION_RULE_HOST,
    CONFLICTING_SERVICE_ENTRY_PROTOCOL,
    DESTINATION_PORT_PINNED_TO_ONLY_SERVICE_PORT,
    CERTIFICATE_FILE_UNUSABLE,
    KIND_NOT_ENFORCED,
    FIELD_NOT_ENFORCED,
];

/// Istio checks `sluice analyze` does not make (or makes differently), and why.
pub const SKIPPED: &[(&str, &str)] = &[
    (
        "IST0101 selector without Pods",
        "when the input declares no Pods, a Gateway, Sidecar or Telemetry selector is also matched with the Services that select such workloads (and a Sidecar's or Telemetry's with WorkloadEntries, also when there are Pods), and a Gateway selector that contains the assumed ingress gateway Pod's labels picks it: sluice's config folders hold no Pods (`sluice gateway --labels` names the workload), and istioctl would report every such selector",
    ),
    (
        "IST0101 namespace without Namespaces",
        "an AuthorizationPolicy's source namespaces are checked only when the input declares Namespace objects; istioctl reading files alone would report every one",
    ),
    (
        "IST0134 DNS auto-allocation",
        "ISTIO_META_DNS_CAPTURE/AUTO_ALLOCATE are not read: the warning is given whenever addresses are missing",
    ),
    (
        "IST0145 Pods",
        "two Gateways with different selectors conflict when one Pod has both selectors' labels (Istio also asks that one selector's text contain the other's); without Pods in the input, when one selector contains the other",
    ),
    (
        "IST0173 Pods and Nodes",
        "subsets are matched with the endpoints the config declares and with the Pods the host's Service selects in its namespace (Istio: any Pod); Nodes are not read, so topology labels are left out of the match",
    ),
];

/// One finding, printed as istioctl does:
/// `Error [IST0101] (VirtualService default/reviews file.yaml:12) Referenced host not found: "reviews"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
    /// `Kind ns/name`, when the problem belongs to a resource.
    pub origin: Option<String>,
    pub file: String,
    /// 0 when unknown.
    pub line: u32,
    pub text: String,
}

impl Message {
    /// A message about `field` of `res`, on that field's line.
    pub fn at(code: &Code, res: &Resource, field: &str, text: impl Into<String>) -> Message {
        Message {
            code: code.code,
            name: code.name,
            level: code.level,
            origin: Some(format!("{} {}", res.kind, res.key())),
            file: res.origin.file.display().to_string(),
            line: res.origin.line_of(field),
            text: text.into(),
        }
    }

    /// `file:line`, or `file` when the line is unknown.
    pub fn reference(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}", self.file, self.line)
        }
    }

    /// Istio's documentation page for the code (none for sluice's own codes).
    pub fn documentation_url(&self) -> Option<String> {
        self.code.starts_with("IST").then(|| {
            format!(
                "https://istio.io/latest/docs/reference/config/analysis/{}/",
                self.code.to_ascii_lowercase()
            )
        })
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] (", self.level, self.code)?;
        if let Some(o) = &self.origin {
            write!(f, "{o} ")?;
        }
        write!(f, "{}) {}", self.reference(), self.text)
    }
}

/// A decode or validation diagnostic as IST0106 (error) or IST0133 (warning). A warning that a
/// VirtualService rule is never used is IST0130 instead, as Istio's schema analyzer reports it:
/// the same message as the analyzers', so [`sort`] keeps one of the two.
pub fn from_diagnostic(d: &Diagnostic) -> Message {
    if let Some(rule) = unused_rule_warning(d) {
        let code = &VIRTUAL_SERVICE_UNREACHABLE_RULE;
        return Message {
            code: code.code,
            name: code.name,
            level: code.level,
            origin: d.resource.clone(),
            file: d.file.clone(),
            line: d.line,
            text: format!("VirtualService rule {rule}."),
        };
    }
    // sluice's own notes on valid config it does not act on: not a schema problem for Istio.
    for own in [&KIND_NOT_ENFORCED, &FIELD_NOT_ENFORCED] {
        if let Some(text) = d
            .message
            .strip_prefix(own.code)
            .and_then(|t| t.strip_prefix(": "))
        {
            return Message {
                code: own.code,
                name: own.name,
                level: own.level,
                origin: d.resource.clone(),
                file: d.file.clone(),
                line: d.line,
                text: text.to_string(),
            };
        }
    }
    let (code, prefix) = match d.severity {
        Severity::Error => (&SCHEMA_VALIDATION_ERROR, "Schema validation error"),
        Severity::Warning => (&SCHEMA_WARNING, "Schema validation warning"),
    };
    let detail = if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    };
    Message {
        code: code.code,
        name: code.name,
        level: code.level,
        origin: d.resource.clone(),
        file: d.file.clone(),
        line: d.line,
        text: format!("{prefix}: {detail}"),
    }
}

/// `#1 not used (reason)` of the webhook's warning `virtualService rule #1 not used (reason)`.
fn unused_rule_warning(d: &Diagnostic) -> Option<&str> {
    if d.severity != Severity::Warning {
        return None;
    }
    let rest = d.message.strip_prefix("virtualService rule ")?;
    rest.contains(" not used (").then_some(rest)
}

/// Every whole-config problem in `resources` (decoded and valid), sorted with [`sort`].
pub fn analyze(resources: &[Resource]) -> Vec<Message> {
    analyze_with_mesh(resources, None)
}

/// [`analyze`] with a mesh config given apart (istioctl's `--meshConfigFile`); without one, the
/// `istio-system/istio` ConfigMap among `resources` is the mesh config, if there is one.
pub fn analyze_with_mesh(
    resources: &[Resource],
    mesh: Option<&sluice_api::mesh::MeshConfig>,
) -> Vec<Message> {
    let mesh = mesh.or_else(|| {
        resources.iter().find_map(|r| match &r.spec {
            Spec::ConfigMap { mesh: Some(m), .. } => Some(&**m),
            _ => None,
        })
    });
    let mut out = Vec::new();
    let default_labels = workloads::default_ingress_labels();
    let pods = workloads::Pods::new(resources, &default_labels);
    authz::check(resources, &mut out);
    destinations::check(resources, &mut out);
    gateways::check(resources, &pods, &mut out);
    routes::check(resources, &mut out);
    rules::check(resources, &pods, &mut out);
    service_entries::check(resources, mesh, &mut out);
    sidecars::check(resources, &pods, &mut out);
    telemetry::check(resources, &pods, &mut out);
    sort(&mut out);
    out
}

/// Keeps the first `max_alike` messages of each kind and replaces the rest by one message,
/// `… and N more like this` (see [`sluice_api::diagnostics::summarize`]): messages are alike
/// when they have the same code, resource and file, and texts that differ only in numbers.
pub fn summarize(messages: Vec<Message>, max_alike: usize) -> Vec<Message> {
    use sluice_api::diagnostics::{more_like_this, shape, summarize_by};
    summarize_by(
        messages,
        max_alike,
        |m| (m.code, m.origin.clone(), m.file.clone(), shape(&m.text)),
        |first_left_out, n| Message {
            text: more_like_this(n),
            ..first_left_out.clone()
        },
    )
}

/// Sorts by level (errors first), code, resource, file and line, and drops duplicates.
pub fn sort(messages: &mut Vec<Message>) {
    messages.sort_by(|a, b| {
        (a.level, a.code, &a.origin, &a.file, a.line, &a.text)
            .cmp(&(b.level, b.code, &b.origin, &b.file, b.line, &b.text))
    });
    messages.dedup();
}

/// At most this many names are listed in one message (Istio lists them all, which made the
/// output grow with the square of the number of resources that conflict with each other).
pub const MAX_LISTED: usize = 8;

/// `a,b,c`, or past [`MAX_LISTED`] names `a,b,…,h and N more`.
fn listed<'a>(names: impl IntoIterator<Item = &'a String, IntoIter: ExactSizeIterator>) -> String {
    let names = names.into_iter();
    let total = names.len();
    let shown: Vec<&str> = names.take(MAX_LISTED).map(String::as_str).collect();
    let mut out = shown.join(",");
    if total > MAX_LISTED {
        out.push_str(&format!(" and {} more", total - MAX_LISTED));
    }
    out
}

/// Go's `%v` of a slice: `[a b c]`.
fn go_list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// IST0101 `selector`: the `selector` written at `field` picks no workload. On the line of its
/// first label, as istioctl points at it.
fn selector_not_found(
    res: &Resource,
    field: &str,
    selector: &sluice_api::networking::Labels,
) -> Message {
    let at = match selector.keys().next() {
        Some(label) => format!("{field}.{label}"),
        None => field.to_string(),
    };
    Message::at(
        &REFERENCED_RESOURCE_NOT_FOUND,
        res,
        &at,
        format!(
            "Referenced selector not found: {:?}",
            selector_string(selector)
        ),
    )
}

/// A label selector as Kubernetes prints it: `k=v,k2=v2` (keys sorted).
fn selector_string(labels: &sluice_api::networking::Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
