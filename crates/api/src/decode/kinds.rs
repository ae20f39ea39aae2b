//! One document → one [`Resource`]: `kind`/`apiVersion` dispatch, metadata, the typed spec of
//! each kind, and `kind: List` flattening.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::kube::{
    EndpointSubset, IngressClassSpec, IngressSpec, KubernetesGatewaySpec, PodSpec, PodStatus,
    SecretData, ServiceSpec,
};
use crate::mesh::MeshConfig;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::resource::{
    Diagnostic, FieldLines, Kind, ObjectMeta, Origin, Resource, ResourceFields, Severity, Spec,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::unenforced::{UnenforcedKind, UnenforcedSpec};
use crate::validate::other_kinds;

use super::typed::{from_json, suggest};
use super::yaml::{self, Document, Positions};
use super::{legacy, LoadResult};

/// Namespace of the mesh ConfigMap, and its name.
const MESH_CONFIGMAP_NAMESPACE: &str = "istio-system";
const MESH_CONFIGMAP_NAME: &str = "istio";

/// Top-level keys of the objects sluice reads; anything else is probably a typo (`sepc:`).
const TOP_LEVEL_KEYS: [&str; 11] = [
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "data",
    "stringData",
    "binaryData",
    "type",
    "subsets",
    "immutable",
];

/// Diagnostics of one document, positioned with its line table.
struct Doc {
    file: Arc<Path>,
    positions: Positions,
    line: u32,
    /// `Kind ns/name` once known (or just `Kind`).
    label: Option<String>,
    diagnostics: Vec<Diagnostic>,
    /// A valid document of a kind sluice validates but does not enforce, which does not become
    /// a resource (a valid Telemetry does, and is counted as one).
    unenforced: bool,
}

impl Doc {
    fn line_of(&self, path: &str) -> u32 {
        line_of(&self.positions, self.line, path)
    }

    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.display().to_string(),
            line: self.line_of(&field),
            resource: self.label.clone(),
            field,
            message: message.into(),
        });
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn warn_all(&mut self, warnings: Vec<legacy::Warning>) {
        for (field, message) in warnings {
            self.warn(field, message);
        }
    }

    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Decodes `value` as `T`, reporting a failure as an error on its field.
    fn typed<T: DeserializeOwned>(&mut self, value: Value, base: &str) -> Option<T> {
        match from_json(value, base) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(e.path, e.message);
                None
            }
        }
    }
}

/// The line of `path`, or of its nearest ancestor that has one, or `default`.
fn line_of(positions: &Positions, default: u32, path: &str) -> u32 {
    let mut p = path;
    loop {
        if let Some(line) = positions.get(p) {
            return *line;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return default,
        }
    }
}

/// Decodes one document into `out`: a resource (unless it has errors) and its diagnostics.
pub(super) fn decode_document(doc: Document, file: &Arc<Path>, out: &mut LoadResult) {
    let Document {
        value,
        positions,
        line,
    } = doc;
    let mut d = Doc {
        file: file.clone(),
        positions,
        line,
        label: None,
        diagnostics: Vec::new(),
        unenforced: false,
    };
    let resource = decode_object(value, &mut d, file, out);
    if let Some(r) = resource.filter(|_| !d.has_errors()) {
        out.resources.push(r);
    }
    if d.unenforced && !d.has_errors() {
        out.unenforced += 1;
    }
    out.diagnostics.extend(d.diagnostics);
}

/// A kind sluice has no schema for:
/// - any kind in an Istio API group, or a near-miss of a kind sluice reads
///   (`ServiceEntery`): an error, with "did you mean", since what the operator meant would
///   silently not happen;
/// - anything else (a Deployment, a ServiceAccount): a warning that it is ignored.
fn unknown_kind(kind_name: &str, api_version: &str, d: &mut Doc) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    // Only near-identical names: `ServiceAccount` is not a misspelled `Service`, and two
    // letters are too many for a short name (`Job` and `Node` are not a misspelled `Pod`).
    let near = Kind::ALL
        .into_iter()
        .map(|k| k.as_str())
        .chain(UnenforcedKind::ALL.into_iter().map(UnenforcedKind::as_str))
        .find(|k| {
            let most = if k.len() <= 4 { 1 } else { 2 };
            strsim::damerau_levenshtein(kind_name, k) <= most
        });
    let istio_group = group.ends_with(".istio.io") || group == "istio.io";
    match near {
        Some(k) => d.error(
            "kind",
            format!("unknown kind {kind_name} (did you mean {k}?)"),
        ),
        None if istio_group => d.error(
            "kind",
            format!("unknown kind {kind_name}: {group} has no such kind"),
        ),
        None => d.warn(
            "kind",
            format!("kind {kind_name} is not used by sluice; ignored"),
        ),
    }
}

fn decode_object(
    value: Value,
    d: &mut Doc,
    file: &Arc<Path>,
    out: &mut LoadResult,
) -> Option<Resource> {
    let Value::Object(mut root) = value else {
        d.error(
            "",
            "expected a Kubernetes object: a mapping with apiVersion, kind and metadata",
        );
        return None;
    };

    let kind_name = match root.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::String(_)) | None => {
            d.error("kind", "kind is required");
            return None;
        }
        Some(_) => {
            d.error("kind", "kind must be a string");
            return None;
        }
    };
    if kind_name == "List" {
        flatten_list(&mut root, d, file, out);
        return None;
    }
    let api_version = match root.get("apiVersion") {
        Some(Value::String(v)) => v.clone(),
        None => String::new(),
        Some(_) => {
            d.error("apiVersion", "apiVersion must be a string");
            return None;
        }
    };

    // Label diagnostics from the raw metadata, so even objects sluice ignores are named.
    d.label = Some(raw_label(&kind_name, &root));

    if let Some(kind) = UnenforcedKind::parse(&kind_name) {
        return decode_unenforced(kind, &api_version, &mut root, d, file);
    }
    let Some(kind) = Kind::parse_in(&kind_name, &api_version) else {
        unknown_kind(&kind_name, &api_version, d);
        return None;
    };
    if !kind.is_analysis_only() {
        return decode_known(kind, &kind_name, &api_version, root, d, file);
    }
    // Proxies do not use these kinds: one sluice cannot read is left out with warnings, and
    // never makes a proxy refuse its file.
    let first = d.diagnostics.len();
    let resource = decode_known(kind, &kind_name, &api_version, root, d, file);
    if !d.diagnostics[first..].iter().any(Diagnostic::is_error) {
        return resource;
    }
    for diagnostic in &mut d.diagnostics[first..] {
        diagnostic.severity = Severity::Warning;
    }
    d.warn(
        "kind",
        format!("this {kind_name} is ignored: proxies do not use it, and `sluice analyze` cannot read it"),
    );
    None
}

/// The rest of [`decode_object`] for a kind sluice reads: `apiVersion`, metadata and spec.
fn decode_known(
    kind: Kind,
    kind_name: &str,
    api_version: &str,
    mut root: Map<String, Value>,
    d: &mut Doc,
    file: &Arc<Path>,
) -> Option<Resource> {
    let accepted = kind.api_versions();
    // Same kind name, another API group (the Gateway API's `Gateway`): a different object that
    // sluice does not read, rather than a wrong version of one it does.
    let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_string();
    if !api_version.is_empty() && !accepted.iter().any(|v| group(v) == group(api_version)) {
        d.warn(
            "apiVersion",
            format!("kind {kind_name} of {api_version} is not used by sluice; ignored"),
        );
        return None;
    }
    // The accepted spelling itself: every resource of a kind then shares one static string.
    let Some(api_version) = accepted.iter().copied().find(|v| *v == api_version) else {
        let list = accepted.join(", ");
        if api_version.is_empty() {
            d.error(
                "apiVersion",
                format!("apiVersion is required; {kind} accepts {list}"),
            );
        } else {
            d.error(
                "apiVersion",
                format!("apiVersion {api_version} is not supported for {kind}; use one of {list}"),
            );
        }
        return None;
    };
    let meta = decode_metadata(&mut root, d)?;
    if meta.name.is_empty() {
        d.error("metadata.name", "metadata.name is required");
        return None;
    }

    warn_unknown_top_level(&root, d);

    let spec = decode_spec(kind, &meta, &mut root, d)?;
    if kind == Kind::KubernetesGateway {
        d.warn(
            "apiVersion",
            format!(
                "SLU0003: {kind_name} ({api_version}) is not served by sluice (it does not \
                 implement the Gateway API); only `sluice analyze` reads it, for the \
                 VirtualServices that name it"
            ),
        );
    }
    Some(Resource::new(ResourceFields {
        kind,
        api_version,
        meta,
        spec,
        origin: Origin {
            file: file.clone(),
            line: d.line,
            positions: FieldLines::from(std::mem::take(&mut d.positions)),
        },
    }))
}

/// Warns about top-level keys sluice does not read (`sepc:`).
fn warn_unknown_top_level(root: &Map<String, Value>, d: &mut Doc) {
    for key in root.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            let hint = suggest(key, &TOP_LEVEL_KEYS)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            d.warn(
                key.clone(),
                format!("unknown top-level field `{key}` is ignored{hint}"),
            );
        }
    }
}

/// One of Istio's kinds that sluice validates but does not enforce ([`UnenforcedKind`]):
/// decoded and checked as Istio's webhook and CRD schema would, so a document Istio refuses is
/// refused here too. A valid one gets a warning (SLU0003) that what it asks for does not
/// happen. Telemetry and RequestAuthentication are the exceptions: enforced by proxies, they
/// share only this decoding and validation, and a valid one becomes a [`Resource`]
/// ([`Kind::Telemetry`], [`Kind::RequestAuthentication`]) without a warning; nothing downstream
/// reads the others.
fn decode_unenforced(
    kind: UnenforcedKind,
    api_version: &str,
    root: &mut Map<String, Value>,
    d: &mut Doc,
    file: &Arc<Path>,
) -> Option<Resource> {
    let accepted = kind.api_versions();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if !api_version.is_empty() && group != kind.group() {
        // Same name in another API group: another object, which sluice does not read.
        d.warn(
            "apiVersion",
            format!(
                "kind {kind} of {api_version} is not used by sluice; ignored",
                kind = kind.as_str()
            ),
        );
        return None;
    }
    if !accepted.contains(&api_version) {
        let list = accepted.join(", ");
        let kind = kind.as_str();
        if api_version.is_empty() {
            d.error(
                "apiVersion",
                format!("apiVersion is required; {kind} accepts {list}"),
            );
        } else {
            d.error(
                "apiVersion",
                format!("apiVersion {api_version} is not supported for {kind}; use one of {list}"),
            );
        }
        return None;
    }
    let meta = decode_metadata(root, d)?;
    if meta.name.is_empty() {
        d.error("metadata.name", "metadata.name is required");
        return None;
    }
    warn_unknown_top_level(root, d);
    let value = take_spec(root);
    let spec = match kind {
        UnenforcedKind::RequestAuthentication => d
            .typed(value, "spec")
            .map(UnenforcedSpec::RequestAuthentication),
        UnenforcedKind::Telemetry => d
            .typed(value, "spec")
            .map(|t| UnenforcedSpec::Telemetry(Box::new(t))),
        UnenforcedKind::WorkloadGroup => d
            .typed(value, "spec")
            .map(|wg| UnenforcedSpec::WorkloadGroup(Box::new(wg))),
        UnenforcedKind::ProxyConfig => d.typed(value, "spec").map(UnenforcedSpec::ProxyConfig),
        UnenforcedKind::EnvoyFilter => d.typed(value, "spec").map(UnenforcedSpec::EnvoyFilter),
        UnenforcedKind::WasmPlugin => d
            .typed(value, "spec")
            .map(|wp| UnenforcedSpec::WasmPlugin(Box::new(wp))),
        UnenforcedKind::TrafficExtension => d
            .typed(value, "spec")
            .map(|te| UnenforcedSpec::TrafficExtension(Box::new(te))),
    };
    let spec = spec?;
    for f in other_kinds::check(&meta, &spec) {
        d.push(f.severity, f.field, f.message);
    }
    if d.has_errors() {
        return None;
    }
    // Telemetry and RequestAuthentication are enforced (they share only this decoding and
    // validation with the others); the others are not, which SLU0003 says.
    let (resource_kind, resource_spec) = match spec {
        UnenforcedSpec::RequestAuthentication(ra) => (
            Kind::RequestAuthentication,
            Spec::RequestAuthentication(Box::new(ra)),
        ),
        UnenforcedSpec::Telemetry(telemetry) => (Kind::Telemetry, Spec::Telemetry(telemetry)),
        _ => {
            d.warn(
                "kind",
                format!(
                    "SLU0003: {kind} ({group}) is valid Istio config, but sluice does not enforce \
                     it: what it asks for does not happen",
                    kind = kind.as_str(),
                    group = kind.group()
                ),
            );
            d.unenforced = true;
            return None;
        }
    };
    let api_version = resource_kind
        .api_versions()
        .iter()
        .copied()
        .find(|v| *v == api_version)?;
    Some(Resource::new(ResourceFields {
        kind: resource_kind,
        api_version,
        meta,
        spec: resource_spec,
        origin: Origin {
            file: file.clone(),
            line: d.line,
            positions: FieldLines::from(std::mem::take(&mut d.positions)),
        },
    }))
}

/// `Kind ns/name` from untyped metadata (`Kind` alone when there is no name).
fn raw_label(kind: &str, root: &Map<String, Value>) -> String {
    let meta = root.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = field("name");
    let namespace = match field("namespace") {
        "" => "default",
        ns => ns,
    };
    if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

fn decode_metadata(root: &mut Map<String, Value>, d: &mut Doc) -> Option<ObjectMeta> {
    let value = match root.remove("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    };
    let mut meta: ObjectMeta = d.typed(value, "metadata")?;
    if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
    Some(meta)
}

/// `spec` (or `{}` when absent or null, which Istio treats the same).
fn take_spec(root: &mut Map<String, Value>) -> Value {
    match root.remove("spec") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    }
}

fn decode_spec(
    kind: Kind,
    meta: &ObjectMeta,
    root: &mut Map<String, Value>,
    d: &mut Doc,
) -> Option<Spec> {
    Some(match kind {
        Kind::VirtualService => {
            let mut value = take_spec(root);
            let warnings = legacy::match_object_to_list(&mut value, &mut d.positions);
            d.warn_all(warnings);
            let mut vs: VirtualService = d.typed(value, "spec")?;
            let warnings = legacy::virtual_service(&mut vs);
            d.warn_all(warnings);
            Spec::VirtualService(vs)
        }
        Kind::DestinationRule => {
            let dr: DestinationRule = d.typed(take_spec(root), "spec")?;
            let warnings = legacy::destination_rule(&dr);
            d.warn_all(warnings);
            Spec::DestinationRule(Box::new(dr))
        }
        Kind::ServiceEntry => {
            let mut se: ServiceEntry = d.typed(take_spec(root), "spec")?;
            // Only the addresses Istio allocated; the rest of a status is istiod's business.
            if let Some(status) = root.remove("status").filter(|v| v.is_object()) {
                let status: crate::networking::ServiceEntryStatus = d.typed(status, "status")?;
                se.allocated_addresses = status.addresses.into_iter().map(|a| a.value).collect();
            }
            Spec::ServiceEntry(se)
        }
        Kind::Gateway => {
            let mut gw: Gateway = d.typed(take_spec(root), "spec")?;
            let warnings = legacy::gateway(&mut gw);
            d.warn_all(warnings);
            Spec::Gateway(gw)
        }
        Kind::WorkloadEntry => {
            Spec::WorkloadEntry(d.typed::<WorkloadEntry>(take_spec(root), "spec")?)
        }
        Kind::Sidecar => Spec::Sidecar(d.typed::<Sidecar>(take_spec(root), "spec")?),
        Kind::Service => Spec::Service(d.typed::<ServiceSpec>(take_spec(root), "spec")?),
        Kind::Endpoints => {
            let subsets = root.remove("subsets").unwrap_or(Value::Null);
            let subsets = if subsets.is_null() {
                Value::Array(Vec::new())
            } else {
                subsets
            };
            Spec::Endpoints(d.typed::<Vec<EndpointSubset>>(subsets, "subsets")?)
        }
        Kind::Secret => decode_secret(root, d)?,
        Kind::ConfigMap => decode_config_map(meta, root, d)?,
        Kind::Ingress => Spec::Ingress(d.typed::<IngressSpec>(take_spec(root), "spec")?),
        Kind::IngressClass => {
            Spec::IngressClass(d.typed::<IngressClassSpec>(take_spec(root), "spec")?)
        }
        Kind::PeerAuthentication => {
            Spec::PeerAuthentication(d.typed::<PeerAuthentication>(take_spec(root), "spec")?)
        }
        Kind::AuthorizationPolicy => {
            Spec::AuthorizationPolicy(d.typed::<AuthorizationPolicy>(take_spec(root), "spec")?)
        }
        Kind::Pod => {
            let mut pod: PodSpec = d.typed(take_spec(root), "spec")?;
            let status = match root.remove("status") {
                None | Some(Value::Null) => PodStatus::default(),
                Some(v) => d.typed(v, "status")?,
            };
            pod.pod_ip = status.pod_ip;
            Spec::Pod(pod)
        }
        Kind::Namespace => Spec::Namespace,
        Kind::KubernetesGateway => {
            Spec::KubernetesGateway(d.typed::<KubernetesGatewaySpec>(take_spec(root), "spec")?)
        }
        // `decode_unenforced` reads Telemetry documents, with Istio's checks; this is the same
        // typed decoding, for completeness.
        Kind::Telemetry => Spec::Telemetry(Box::new(d.typed(take_spec(root), "spec")?)),
        // Read by `decode_unenforced` too, with Istio's checks.
        Kind::RequestAuthentication => {
            Spec::RequestAuthentication(Box::new(d.typed(take_spec(root), "spec")?))
        }
    })
}

/// A string → string map such as ConfigMap `data` (absent or null → empty).
fn string_map(
    root: &mut Map<String, Value>,
    key: &str,
    d: &mut Doc,
) -> Option<BTreeMap<String, String>> {
    match root.remove(key) {
        None | Some(Value::Null) => Some(BTreeMap::new()),
        Some(v) => d.typed(v, key),
    }
}

/// Secret `data` (base64) merged with `stringData` (plain text, wins on conflict as in
/// Kubernetes).
fn decode_secret(root: &mut Map<String, Value>, d: &mut Doc) -> Option<Spec> {
    let secret_type = match root.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    let encoded = string_map(root, "data", d)?;
    let plain = string_map(root, "stringData", d)?;
    let mut data = SecretData::new();
    for (key, value) in encoded {
        // `kubectl get -o yaml` never wraps, but hand-written files sometimes do.
        let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => {
                data.insert(key, bytes);
            }
            Err(e) => d.error(
                format!("data.{key}"),
                format!("invalid base64 ({e}); put plain text under stringData instead"),
            ),
        }
    }
    for (key, value) in plain {
        data.insert(key, value.into_bytes());
    }
    Some(Spec::Secret { secret_type, data })
}

/// ConfigMap `data`; for `istio-system/istio`, also its `mesh` key decoded as MeshConfig.
fn decode_config_map(
    meta: &ObjectMeta,
    root: &mut Map<String, Value>,
    d: &mut Doc,
) -> Option<Spec> {
    let data = string_map(root, "data", d)?;
    let is_mesh = meta.name == MESH_CONFIGMAP_NAME && meta.namespace == MESH_CONFIGMAP_NAMESPACE;
    let mesh = match data.get("mesh") {
        Some(text) if is_mesh => Some(Box::new(decode_mesh(text, d)?)),
        _ => None,
    };
    Some(Spec::ConfigMap { data, mesh })
}

/// A MeshConfig file (istioctl's `--meshConfigFile`): the YAML of the ConfigMap's `mesh` key on
/// its own. Errors name the file and line.
pub fn decode_mesh_file(file: &Path, text: &str) -> Result<MeshConfig, Vec<Diagnostic>> {
    let mut d = Doc {
        file: Arc::from(file),
        positions: Positions::new(),
        line: 1,
        label: None,
        diagnostics: Vec::new(),
        unenforced: false,
    };
    let docs = match yaml::parse_documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            d.line = e.line;
            d.error("", format!("invalid mesh config: {}", e.message));
            return Err(d.diagnostics);
        }
    };
    let Some(doc) = docs.into_iter().next() else {
        return Ok(MeshConfig::default());
    };
    d.positions = doc.positions;
    d.line = doc.line;
    match from_json::<MeshConfig>(doc.value, "") {
        Ok(mesh) => Ok(mesh),
        Err(e) => {
            d.error(e.path, format!("invalid mesh config: {}", e.message));
            Err(d.diagnostics)
        }
    }
}

/// The embedded MeshConfig YAML. Errors point at `data.mesh` and say which line of the embedded
/// text is wrong, since its lines are not lines of the file.
fn decode_mesh(text: &str, d: &mut Doc) -> Option<MeshConfig> {
    let docs = match yaml::parse_documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            d.error(
                "data.mesh",
                format!(
                    "invalid mesh config (line {} of the mesh text): {}",
                    e.line, e.message
                ),
            );
            return None;
        }
    };
    let Some(doc) = docs.into_iter().next() else {
        return Some(MeshConfig::default());
    };
    match from_json::<MeshConfig>(doc.value, "") {
        Ok(mesh) => Some(mesh),
        Err(e) => {
            let inner = line_of(&doc.positions, doc.line, &e.path);
            let at = if e.path.is_empty() {
                String::new()
            } else {
                format!(" at {}", e.path)
            };
            d.error(
                "data.mesh",
                format!(
                    "invalid mesh config{at} (line {inner} of the mesh text): {}",
                    e.message
                ),
            );
            None
        }
    }
}

/// `kind: List` (what `kubectl get -o yaml` prints for several objects): each item is decoded as
/// its own document, with its own line table.
fn flatten_list(
    root: &mut Map<String, Value>,
    d: &mut Doc,
    file: &Arc<Path>,
    out: &mut LoadResult,
) {
    let items = match root.remove("items") {
        None | Some(Value::Null) => return,
        Some(Value::Array(items)) => items,
        Some(_) => {
            d.error("items", "items must be a list of objects");
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("items[{i}]");
        let item_line = d.line_of(&prefix);
        let fields = format!("{prefix}.");
        let positions: Positions = yaml::positions_under(&d.positions, &fields)
            .map(|(path, line)| (path[fields.len()..].to_string(), *line))
            .collect();
        let first_key_line = item
            .as_object()
            .and_then(|o| o.keys().next())
            .and_then(|k| positions.get(k).copied())
            .unwrap_or(item_line);
        decode_document(
            Document {
                value: item,
                positions,
                line: first_key_line,
            },
            file,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::kube::PodSpec;
    use crate::resource::{Kind, Spec};

    fn decode(text: &str) -> crate::decode::LoadResult {
        crate::decode::decode_str(Path::new("t.yaml"), text)
    }

    #[test]
    fn pods_namespaces_and_gateway_api_gateways_are_read_for_analysis() {
        let out = decode(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\n\
             spec:\n  nodeName: node-a\n  serviceAccountName: web\n  containers: [{name: web, image: nginx}]\n\
             status: {podIP: 10.0.0.7, phase: Running, conditions: [{type: Ready}]}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\n\
             spec:\n  gatewayClassName: istio\n  listeners:\n  - {name: http, hostname: a.example.com, port: 80, protocol: HTTP}\n  - {name: any, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n",
        );
        let kinds: Vec<Kind> = out.resources.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Pod, Kind::Namespace, Kind::KubernetesGateway]);
        let Spec::Pod(pod) = &out.resources[0].spec else {
            panic!("{:?}", out.resources[0].spec)
        };
        assert_eq!(
            pod,
            &PodSpec {
                service_account_name: Some("web".into()),
                node_name: Some("node-a".into()),
                pod_ip: Some("10.0.0.7".into()),
            }
        );
        assert_eq!(out.resources[0].meta.labels["app"], "web");
        assert_eq!(out.resources[1].spec, Spec::Namespace);
        let Spec::KubernetesGateway(gw) = &out.resources[2].spec else {
            panic!("{:?}", out.resources[2].spec)
        };
        let hosts: Vec<Option<&str>> = gw.listeners.iter().map(|l| l.hostname.as_deref()).collect();
        assert_eq!(hosts, [Some("a.example.com"), None]);
        assert_eq!(out.resources[2].kind.as_str(), "Gateway");
        // Only the Gateway API Gateway is said not to be served; Pods and Namespaces are quiet.
        assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
        assert!(out.diagnostics[0].message.contains("not served by sluice"));
        assert!(!out.has_errors());
        // Not carried to proxies.
        assert!(out.resources.iter().all(|r| r.spec_json().is_none()));
    }

    #[test]
    fn an_unreadable_pod_or_gateway_api_gateway_is_ignored_with_warnings_not_refused() {
        let out = decode(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: [a]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1alpha1\nkind: Gateway\nmetadata: {name: g}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {labels: [x]}\n",
        );
        assert!(out.resources.is_empty());
        assert!(!out.has_errors(), "{:?}", out.diagnostics);
        let ignored = out
            .diagnostics
            .iter()
            .filter(|d| d.message.contains("is ignored: proxies do not use it"))
            .count();
        assert_eq!(ignored, 3, "{:?}", out.diagnostics);
    }

    #[test]
    fn short_kind_names_are_not_misspellings_of_pod() {
        for kind in ["Job", "Node", "Role"] {
            let out = decode(&format!(
                "apiVersion: example.com/v1\nkind: {kind}\nmetadata: {{name: a}}\n"
            ));
            assert!(!out.has_errors(), "{kind}: {:?}", out.diagnostics);
        }
        let out = decode("apiVersion: v1\nkind: Pods\nmetadata: {name: a}\n");
        assert!(out.diagnostics[0].message.contains("did you mean Pod?"));
    }
}
