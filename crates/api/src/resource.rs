//! A decoded resource: kind, metadata, typed spec, and where in which file it was written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::kube::{EndpointSubset, IngressClassSpec, IngressSpec, SecretData, ServiceSpec};
use crate::mesh::MeshConfig;
use crate::networking::{
    DestinationRule, Gateway, Labels, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

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
}

impl Kind {
    /// Every kind, for "did you mean" suggestions and help text.
    pub const ALL: [Kind; 14] = [
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
            Kind::Service | Kind::Endpoints | Kind::Secret | Kind::ConfigMap => &["v1"],
            Kind::Ingress => &[
                "networking.k8s.io/v1",
                "networking.k8s.io/v1beta1",
                "extensions/v1beta1",
            ],
            Kind::IngressClass => &["networking.k8s.io/v1", "networking.k8s.io/v1beta1"],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
        }
    }

    /// Parses a `kind:` string.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
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
    pub positions: Arc<FieldLines>,
}

/// The line of every field path of one resource (`spec.http[0].timeout` → 12). A proxy keeps
/// these for every resource it serves (a recompile can report any field), so they are packed: all
/// paths in one string, and one sorted (end offset, line) pair per path, two allocations instead
/// of a tree node and a string per field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldLines {
    /// Every path, concatenated in sorted order.
    paths: Box<str>,
    /// Per path, in the same order: where it ends in `paths`, and its line.
    entries: Box<[(u32, u32)]>,
}

impl FieldLines {
    /// The line of exactly `path`.
    pub fn get(&self, path: &str) -> Option<u32> {
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.path(mid).cmp(path) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.entries[mid].1),
            }
        }
        None
    }

    /// Every (path, line), sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        (0..self.entries.len()).map(|i| (self.path(i), self.entries[i].1))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.paths.len() + std::mem::size_of_val(&*self.entries)
    }

    /// The `i`th path: from where the previous one ends to where it ends.
    fn path(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.entries[p].0 as usize);
        &self.paths[start..self.entries[i].0 as usize]
    }
}

impl From<BTreeMap<String, u32>> for FieldLines {
    fn from(map: BTreeMap<String, u32>) -> Self {
        let mut paths = String::with_capacity(map.keys().map(String::len).sum());
        let mut entries = Vec::with_capacity(map.len());
        // A BTreeMap iterates in sorted order, which `get`'s binary search relies on.
        for (path, line) in map {
            paths.push_str(&path);
            entries.push((u32::try_from(paths.len()).unwrap_or(u32::MAX), line));
        }
        FieldLines {
            paths: paths.into_boxed_str(),
            entries: entries.into_boxed_slice(),
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
    pub api_version: String,
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
        assert!(lines
            .iter()
            .map(|(p, _)| p)
            .eq(map.keys().map(String::as_str)));
        assert!(FieldLines::default().get("spec").is_none());

        let origin = Origin {
            file: Arc::from(Path::new("vs.yaml")),
            line: 1,
            positions: Arc::new(lines),
        };
        assert_eq!(origin.line_of("spec.http[0].timeout"), 9);
        assert_eq!(origin.line_of("spec.http[0].retries.attempts"), 5);
        assert_eq!(origin.line_of("metadata.name"), 1);
    }
}
