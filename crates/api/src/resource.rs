//! A decoded resource: kind, metadata, typed spec, and where in which file it was written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::kube::{
    EndpointSubset, IngressClassSpec, IngressSpec, KubernetesGatewaySpec, PodSpec, SecretData,
    ServiceSpec,
};
use crate::mesh::MeshConfig;
use crate::networking::{
    DestinationRule, Gateway, Labels, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::unenforced::{RequestAuthentication, Telemetry};

/// The kinds sluice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Gateway,
    WorkloadEntry,
    Sidecar,
    Service,
    Endpoints,
    Secret,
    ConfigMap,
    Ingress,
    IngressClass,
    PeerAuthentication,
    AuthorizationPolicy,
    /// Read only by `sluice analyze` (the workloads Istio's analyzers match selectors with);
    /// proxies and the control plane ignore Pods.
    Pod,
    /// Read only by `sluice analyze` (which namespaces exist); ignored elsewhere.
    Namespace,
    /// A Gateway API `Gateway` (`gateway.networking.k8s.io`), written `kind: Gateway` like
    /// Istio's: read only by `sluice analyze`, for the VirtualServices that name it. Sluice does
    /// not serve the Gateway API.
    KubernetesGateway,
    /// Istio's Telemetry (access logging, metrics overrides, tracing): decoded and validated
    /// with the kinds of [`crate::unenforced`], enforced by proxies (`sluice_model`'s
    /// `telemetry_policy`) and read by `sluice analyze` for the workloads its selector names.
    Telemetry,
    /// Istio's RequestAuthentication (JWT validation), decoded and checked with the kinds of
    /// [`crate::unenforced`] but enforced by proxies.
    RequestAuthentication,
}

impl Kind {
    /// Every kind, for "did you mean" suggestions and help text.
    /// [`Kind::KubernetesGateway`] comes after [`Kind::Gateway`], so that [`Kind::parse`] of
    /// `Gateway` is Istio's.
    pub const ALL: [Kind; 19] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::Gateway,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::Service,
        Kind::Endpoints,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Pod,
        Kind::Namespace,
        Kind::KubernetesGateway,
        Kind::Telemetry,
        Kind::RequestAuthentication,
    ];

    /// The `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Gateway => "Gateway",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::KubernetesGateway => "Gateway",
            Kind::Telemetry => "Telemetry",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    /// The apiVersions accepted for this kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        const ISTIO: &[&str] = &[
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ];
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::Gateway
            | Kind::WorkloadEntry
            | Kind::Sidecar => ISTIO,
            Kind::Service
            | Kind::Endpoints
            | Kind::Secret
            | Kind::ConfigMap
            | Kind::Pod
            | Kind::Namespace => &["v1"],
            Kind::Ingress => &[
                "networking.k8s.io/v1",
                "networking.k8s.io/v1beta1",
                "extensions/v1beta1",
            ],
            Kind::IngressClass => &["networking.k8s.io/v1", "networking.k8s.io/v1beta1"],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            Kind::KubernetesGateway => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
                "gateway.networking.k8s.io/v1alpha2",
            ],
            Kind::Telemetry => &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"],
        }
    }

    /// Kinds only `sluice analyze` reads (Pod, Namespace, the Gateway API's Gateway):
    /// proxies and the control plane ignore them. A problem in one is never an error that
    /// refuses its file.
    pub fn is_analysis_only(self) -> bool {
        matches!(self, Kind::Pod | Kind::Namespace | Kind::KubernetesGateway)
    }

    /// Parses a `kind:` string (Istio's kind where two API groups use the name).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Parses a `kind:` string written with `api_version`: the kind of that name in the
    /// version's API group, else [`Kind::parse`]'s.
    pub fn parse_in(s: &str, api_version: &str) -> Option<Kind> {
        let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        let wanted = group(api_version);
        Kind::ALL
            .into_iter()
            .filter(|k| k.as_str() == s)
            .find(|k| k.api_versions().iter().any(|v| group(v) == wanted))
            .or_else(|| Kind::parse(s))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `metadata` fields sluice uses. Other metadata (uid, resourceVersion, …) is ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    /// Empty in the YAML means `default`; decoding fills it in.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// Where a resource was written: the file, the line of its first key, and the line of every field
/// path (`spec.http[0].timeout`), so validation and analysis can point at the exact line.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: u32,
    pub positions: FieldLines,
}

/// The line of every field path of one resource (`spec.http[0].timeout` → 12). A proxy keeps
/// these for every resource it serves (a recompile can report any field), so they are packed in
/// one allocation: the paths in sorted order, each stored as front coding does (how many leading
/// bytes it shares with the previous path, then the rest), with its line; every number a LEB128
/// varint. Sorted field paths share long prefixes (`spec.http[0].route[0].destination.`), so
/// this takes about a third of a string of whole paths. Lookups decode from the start: they
/// happen only when a diagnostic names a field, and a resource has tens of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldLines {
    packed: Box<[u8]>,
}

impl FieldLines {
    /// The line of exactly `path`.
    pub fn get(&self, path: &str) -> Option<u32> {
        let mut entries = self.iter();
        while let Some((p, line)) = entries.next_entry() {
            if p == path {
                return Some(line);
            }
        }
        None
    }

    /// Every (path, line), sorted by path.
    pub fn iter(&self) -> FieldLinesIter<'_> {
        FieldLinesIter {
            packed: &self.packed,
            path: String::new(),
        }
    }

    pub fn len(&self) -> usize {
        let mut n = 0;
        let mut it = self.iter();
        while it.advance().is_some() {
            n += 1;
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.packed.len()
    }
}

/// Decodes [`FieldLines`] in order; each path is rebuilt in the iterator's buffer, so entries are
/// read one at a time with `next_entry` (a lending iterator).
pub struct FieldLinesIter<'a> {
    packed: &'a [u8],
    path: String,
}

impl FieldLinesIter<'_> {
    /// Decodes the next entry into `self.path` and returns its line.
    fn advance(&mut self) -> Option<u32> {
        if self.packed.is_empty() {
            return None;
        }
        let shared = self.varint()? as usize;
        let rest = self.varint()? as usize;
        let line = self.varint()?;
        let suffix = self.packed.get(..rest)?;
        self.packed = &self.packed[rest..];
        // Written from whole `str`s by `From` below, cut only at char boundaries.
        self.path.truncate(shared);
        self.path.push_str(std::str::from_utf8(suffix).ok()?);
        Some(line)
    }

    fn varint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for (i, byte) in self.packed.iter().enumerate().take(5) {
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.packed = &self.packed[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// The next `(path, line)`; the path lives until the following call.
    pub fn next_entry(&mut self) -> Option<(&str, u32)> {
        let line = self.advance()?;
        Some((&self.path, line))
    }
}

fn push_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl From<BTreeMap<String, u32>> for FieldLines {
    fn from(map: BTreeMap<String, u32>) -> Self {
        let mut packed = Vec::new();
        let mut previous = "";
        // A BTreeMap iterates in sorted order, which is what makes neighbours share prefixes.
        for (path, line) in &map {
            let mut shared = previous
                .bytes()
                .zip(path.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            while !path.is_char_boundary(shared) {
                shared -= 1;
            }
            let rest = &path.as_bytes()[shared..];
            push_varint(&mut packed, u32::try_from(shared).unwrap_or(u32::MAX));
            push_varint(&mut packed, u32::try_from(rest.len()).unwrap_or(u32::MAX));
            push_varint(&mut packed, *line);
            packed.extend_from_slice(rest);
            previous = path;
        }
        FieldLines {
            packed: packed.into_boxed_slice(),
        }
    }
}

impl Origin {
    /// The line of `path`, or of its nearest ancestor that has one, or of the resource.
    pub fn line_of(&self, path: &str) -> u32 {
        let mut p = path;
        loop {
            if let Some(line) = self.positions.get(p) {
                return line;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.line,
            }
        }
    }
}

/// A typed spec, one variant per [`Kind`].
// Resources are few and long-lived, and boxing the larger specs would make every `match` on
// them noisier for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(VirtualService),
    // Boxed: a DestinationRule is ~1.2 KiB inline, and every resource held for recompiles
    // would pay for it (`Spec` is as large as its largest variant).
    DestinationRule(Box<DestinationRule>),
    ServiceEntry(ServiceEntry),
    Gateway(Gateway),
    WorkloadEntry(WorkloadEntry),
    Sidecar(Sidecar),
    Service(ServiceSpec),
    Endpoints(Vec<EndpointSubset>),
    Secret {
        secret_type: Option<String>,
        data: SecretData,
    },
    /// ConfigMap `data`; for `istio-system/istio` also its decoded mesh config.
    ConfigMap {
        data: BTreeMap<String, String>,
        mesh: Option<Box<MeshConfig>>,
    },
    Ingress(IngressSpec),
    IngressClass(IngressClassSpec),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    /// Labels are the metadata's.
    Pod(PodSpec),
    /// Nothing but its metadata.
    Namespace,
    KubernetesGateway(KubernetesGatewaySpec),
    /// A valid Telemetry (boxed: it is larger than most specs and rarely present).
    Telemetry(Box<Telemetry>),
    /// A valid RequestAuthentication (boxed: rarely present).
    RequestAuthentication(Box<RequestAuthentication>),
}

/// One decoded and typed resource. Cheap to clone: the config store hands every resource it
/// holds to each compile, and a deep copy of thousands of them per reload cost time and left
/// the allocator fragmented. Its fields are read through `Deref`; it is never changed once
/// decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource(Arc<ResourceFields>);

/// What a [`Resource`] holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceFields {
    pub kind: Kind,
    /// One of [`Kind::api_versions`].
    pub api_version: &'static str,
    pub meta: ObjectMeta,
    pub spec: Spec,
    pub origin: Origin,
}

impl Resource {
    pub fn new(fields: ResourceFields) -> Resource {
        Resource(Arc::new(fields))
    }

    /// The fields to change, copied first if another holder shares them (tests that derive
    /// one resource from another).
    pub fn make_mut(&mut self) -> &mut ResourceFields {
        Arc::make_mut(&mut self.0)
    }
}

impl std::ops::Deref for Resource {
    type Target = ResourceFields;
    fn deref(&self) -> &ResourceFields {
        &self.0
    }
}

impl Resource {
    /// `ns/name`, as messages print it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.meta.namespace, self.meta.name)
    }

    /// The spec as JSON, in the form the YAML writes it (camelCase fields, enums as names,
    /// durations as `"5s"`): what the control plane carries to proxies over MCP. Decoding it
    /// again as this resource's `spec` gives an equal [`Spec`].
    ///
    /// Kinds that keep their content beside `spec` give an object of those top-level fields
    /// instead: ConfigMap `{"data": {…}}`, Secret `{"type": …, "data": {key: base64}}` (`type`
    /// only when set), Endpoints `{"subsets": […]}`.
    /// Pods, Namespaces, Gateway API Gateways and Telemetries, which only `sluice analyze`
    /// reads, give `None`.
    ///
    /// Pre-1.0 fields that decoding accepts with a warning but Istio's API no longer has are
    /// left out, so the JSON is what Istio's own decoder accepts: a destination's `name` (already
    /// copied to `host` by decoding), a port selector's `name` and an HTTP route's
    /// `websocketUpgrade` (both ignored). Only for resources written that way does decoding the
    /// JSON give a `Spec` that differs, in exactly those fields.
    pub fn spec_json(&self) -> Option<serde_json::Value> {
        use serde_json::{json, Value};
        let value = match &self.spec {
            Spec::VirtualService(vs) => {
                let mut vs = vs.clone();
                strip_legacy_virtual_service(&mut vs);
                serde_json::to_value(vs)
            }
            Spec::DestinationRule(dr) => {
                let mut dr = dr.as_ref().clone();
                strip_legacy_destination_rule(&mut dr);
                serde_json::to_value(dr)
            }
            Spec::ServiceEntry(s) => serde_json::to_value(s),
            Spec::Gateway(s) => serde_json::to_value(s),
            Spec::WorkloadEntry(s) => serde_json::to_value(s),
            Spec::Sidecar(s) => serde_json::to_value(s),
            Spec::Service(s) => serde_json::to_value(s),
            Spec::Ingress(s) => serde_json::to_value(s),
            Spec::IngressClass(s) => serde_json::to_value(s),
            Spec::PeerAuthentication(s) => serde_json::to_value(s),
            Spec::AuthorizationPolicy(s) => serde_json::to_value(s),
            Spec::RequestAuthentication(s) => serde_json::to_value(s),
            Spec::Endpoints(subsets) => {
                serde_json::to_value(subsets).map(|s| json!({ "subsets": s }))
            }
            // `mesh` is derived from `data.mesh` when decoding, so `data` is all there is.
            Spec::ConfigMap { data, .. } => {
                serde_json::to_value(data).map(|d| json!({ "data": d }))
            }
            Spec::Secret { secret_type, data } => {
                use base64::Engine as _;
                let encoded: serde_json::Map<String, Value> = data
                    .iter()
                    .map(|(k, v)| {
                        let text = base64::engine::general_purpose::STANDARD.encode(v);
                        (k.clone(), Value::String(text))
                    })
                    .collect();
                let mut object = serde_json::Map::new();
                if let Some(t) = secret_type {
                    object.insert("type".to_string(), Value::String(t.clone()));
                }
                object.insert("data".to_string(), Value::Object(encoded));
                Ok(Value::Object(object))
            }
            Spec::Telemetry(t) => serde_json::to_value(t),
            // Read only by `sluice analyze`: never carried to a proxy.
            Spec::Pod(_) | Spec::Namespace | Spec::KubernetesGateway(_) => return None,
        };
        value.ok()
    }
}

/// Clears the pre-1.0 fields of a VirtualService that Istio's API no longer has (see
/// [`Resource::spec_json`]).
fn strip_legacy_virtual_service(vs: &mut VirtualService) {
    fn destination(d: &mut crate::networking::Destination) {
        d.name = None;
        if let Some(port) = d.port.as_mut() {
            port.name = None;
        }
    }
    for http in &mut vs.http {
        http.websocket_upgrade = None;
        http.route
            .iter_mut()
            .for_each(|r| destination(&mut r.destination));
        if let Some(m) = http.mirror.as_mut() {
            destination(m);
        }
        http.mirrors
            .iter_mut()
            .for_each(|m| destination(&mut m.destination));
    }
    let streams = vs.tls.iter_mut().flat_map(|t| t.route.iter_mut());
    let streams = streams.chain(vs.tcp.iter_mut().flat_map(|t| t.route.iter_mut()));
    streams.for_each(|r| destination(&mut r.destination));
}

/// Clears port selectors' pre-1.0 `name` in a DestinationRule's port-level settings.
fn strip_legacy_destination_rule(dr: &mut DestinationRule) {
    let policies = dr.traffic_policy.iter_mut();
    let policies = policies.chain(
        dr.subsets
            .iter_mut()
            .filter_map(|s| s.traffic_policy.as_mut()),
    );
    for policy in policies {
        for port in policy
            .port_level_settings
            .iter_mut()
            .filter_map(|p| p.port.as_mut())
        {
            port.name = None;
        }
    }
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found while decoding or validating, printed as
/// `file:line: Kind ns/name: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    /// `Kind ns/name`, when the resource got far enough to be named.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.http[0].timeout`; empty for document-level problems.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about `field` of `res`, positioned at that field's line.
    pub fn at(
        res: &Resource,
        severity: Severity,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        Diagnostic {
            severity,
            file: res.origin.file.display().to_string(),
            line: res.origin.line_of(&field),
            resource: Some(format!("{} {}", res.kind, res.key())),
            field,
            message: message.into(),
        }
    }

    /// True for errors (the resource is refused); false for warnings.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `Kind ns/name: field: message`, without the file and line: for config that came from a
    /// control plane, where the file is the sender's (a NACK's `error_detail` carries this).
    pub fn without_location(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.resource {
            out.push_str(r);
            out.push_str(": ");
        }
        if !self.field.is_empty() {
            out.push_str(&self.field);
            out.push_str(": ");
        }
        if self.severity == Severity::Warning {
            out.push_str("warning: ");
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lines_find_exact_paths_and_origin_falls_back_to_ancestors() {
        let map: BTreeMap<String, u32> = [
            ("spec", 3),
            ("spec.hosts", 4),
            ("spec.hosts[0]", 4),
            ("spec.http", 5),
            ("spec.http[0].timeout", 9),
            ("spec.httpx", 12),
        ]
        .into_iter()
        .map(|(p, l)| (p.to_string(), l))
        .collect();
        let lines = FieldLines::from(map.clone());
        assert_eq!(lines.len(), map.len());
        for (path, line) in &map {
            assert_eq!(lines.get(path), Some(*line), "{path}");
        }
        assert_eq!(lines.get("spec.htt"), None);
        assert_eq!(lines.get("spec.http[0]"), None);
        assert_eq!(lines.get(""), None);
        let mut it = lines.iter();
        for (path, line) in &map {
            assert_eq!(it.next_entry(), Some((path.as_str(), *line)));
        }
        assert_eq!(it.next_entry(), None);
        // Front coding shares prefixes: far smaller than the paths themselves.
        assert!(lines.heap_bytes() < map.keys().map(String::len).sum::<usize>());
        assert!(FieldLines::default().get("spec").is_none());

        // Long paths and large line numbers take multi-byte varints; a shared prefix never
        // splits a character.
        let long = format!("spec.{}", "x".repeat(300));
        let odd: BTreeMap<String, u32> = [
            (long.clone(), 70_000),
            (format!("{long}.y"), 128),
            ("spec.headers.é".to_string(), 5),
            ("spec.headers.è".to_string(), 6),
        ]
        .into_iter()
        .collect();
        let packed = FieldLines::from(odd.clone());
        for (path, line) in &odd {
            assert_eq!(packed.get(path), Some(*line), "{path}");
        }
        assert_eq!(packed.len(), 4);

        let origin = Origin {
            file: Arc::from(Path::new("vs.yaml")),
            line: 1,
            positions: lines,
        };
        assert_eq!(origin.line_of("spec.http[0].timeout"), 9);
        assert_eq!(origin.line_of("spec.http[0].retries.attempts"), 5);
        assert_eq!(origin.line_of("metadata.name"), 1);
    }
}
