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
    pub positions: Arc<BTreeMap<String, u32>>,
}

impl Origin {
    /// The line of `path`, or of its nearest ancestor that has one, or of the resource.
    pub fn line_of(&self, path: &str) -> u32 {
        let mut p = path;
        loop {
            if let Some(line) = self.positions.get(p) {
                return *line;
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

/// One decoded and typed resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub api_version: String,
    pub meta: ObjectMeta,
    pub spec: Spec,
    pub origin: Origin,
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
