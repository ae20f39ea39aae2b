//! Sidecar injection, as Istio's injector does it (`pkg/kube/inject/`,
//! `injection-template.yaml`), for sluice: an `istio-init` init container that runs
//! `sluice init` (iptables capture, istio-iptables' flags) and an `istio-proxy` container that
//! runs `sluice sidecar` fed by the control plane, as uid/gid 1337, with Istio's labels,
//! annotations and probes.
//!
//! - [`inject_manifest`]: `sluice inject -f FILE` (as `istioctl kube-inject`): multi-document
//!   YAML in, the same documents out, workloads injected, everything else byte for byte.
//! - [`inject_object`]: one object (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//!   CronJob, ReplicationController, DeploymentConfig, or a `List` of them).
//! - [`pod::inject`]: one pod or pod template; the webhook ([`crate::webhook`]) calls it on the
//!   Pod the API server sends.
//!
//! Problems are [`Diagnostic`]s, printed as `sluice validate` prints them:
//! `file:line: Kind ns/name: field: message`.

pub mod pod;
pub mod settings;
pub mod yaml;

use std::path::Path;

use serde_json::{Map, Value};
use sluice_api::{Diagnostic, Severity};

pub use pod::{PodOutcome, PodProblem, Skip, WorkloadName};

/// The image injected by default: sluice's own release image, whose entrypoint is `sluice`
/// (every role is the same binary; the args choose `init` or `sidecar`).
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/sluice-mesh/sluice:", env!("CARGO_PKG_VERSION"));

/// Where the image has the binary (for exec hooks, which do not go through the entrypoint).
pub const SLUICE_PATH: &str = "/usr/local/bin/sluice";

/// The Service in front of `sluice control`, and its namespace (istiod's).
pub const CONTROL_SERVICE: &str = "sluice-control";
pub const CONTROL_NAMESPACE: &str = "istio-system";

/// The control plane the injected sidecars connect to by default: `sluice control`'s plaintext
/// xDS port behind its Service, [`xds_address_for`] the default namespace.
pub const DEFAULT_XDS_ADDRESS: &str = "sluice-control.istio-system.svc:15010";

/// The plaintext xDS address of a control plane running in `namespace`.
pub fn xds_address_for(namespace: &str) -> String {
    format!("{CONTROL_SERVICE}.{namespace}.svc:15010")
}

/// Istio's container names (kept so tools that look for them, `kubectl logs -c istio-proxy`,
/// Kiali, `istioctl`, find them).
pub const PROXY_CONTAINER: &str = "istio-proxy";
pub const INIT_CONTAINER: &str = "istio-init";
/// The proxy's uid and gid, which `sluice init -u` exempts from capture.
pub const PROXY_UID: u32 = 1337;
/// The sidecar's ports (see `sluice sidecar --help`): captured outbound and inbound, the health
/// port (`/healthz/ready`), the Prometheus port (`/stats/prometheus`).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const STATUS_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15090;

/// What the injector is told (the flags of `sluice inject`, or of `sluice control` for the
/// webhook).
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// Image of both injected containers (`sidecar.istio.io/proxyImage` overrides it per pod).
    pub image: String,
    /// HOST:PORT of the control plane's plaintext xDS port (`sluice sidecar --xds`).
    pub xds_address: String,
    /// The mesh config's `defaultConfig` (a ProxyConfig), under each pod's
    /// `proxy.istio.io/config`.
    pub default_proxy_config: Map<String, Value>,
    /// The revision recorded in `istio.io/rev` and the status annotation.
    pub revision: String,
    /// HOST:PORT of the control plane's certificate service (its 15012): the sidecar gets a
    /// mesh identity there for its service-account token and takes its config from that port
    /// over mutual TLS, as Istio's sidecars do. `None`: plaintext `xds_address`, no identity.
    pub ca_address: Option<String>,
}

/// Where an injected sidecar finds its token for the certificate service and the mesh root
/// (Istio's paths and volume names).
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "istio-token";
pub const ROOT_DIR: &str = "/var/run/secrets/istio";
pub const TOKEN_VOLUME: &str = "istio-token";
pub const ROOT_VOLUME: &str = "istiod-ca-cert";

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: DEFAULT_IMAGE.to_string(),
            xds_address: DEFAULT_XDS_ADDRESS.to_string(),
            default_proxy_config: Map::new(),
            revision: "default".to_string(),
            ca_address: None,
        }
    }
}

/// A manifest after injection.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    /// The documents, in order, separated by `---`.
    pub text: String,
    /// How many pods (or pod templates) were injected.
    pub injected: usize,
    /// Warnings, and the workloads left alone and why.
    pub warnings: Vec<Diagnostic>,
}

/// Injects every workload of a multi-document manifest. `file` names the text in messages.
/// Documents that are not workloads, and workloads left alone, are written back exactly as
/// they were; injected ones are written as block YAML in their original key order.
pub fn inject_manifest(
    file: &str,
    text: &str,
    opts: &InjectOptions,
) -> Result<Injected, Diagnostic> {
    let pieces = yaml::parse_pieces(text).map_err(|e| Diagnostic {
        severity: Severity::Error,
        file: file.to_string(),
        line: e.line,
        resource: None,
        field: String::new(),
        message: e.message,
    })?;
    let mut out = Injected::default();
    for (i, piece) in pieces.into_iter().enumerate() {
        if i > 0 {
            out.text.push_str("---\n");
        }
        let mut changed = false;
        let mut docs = Vec::with_capacity(piece.documents.len());
        for doc in piece.documents {
            let mut value = doc.value;
            let mut cx = Doc {
                file,
                positions: &doc.positions,
                line: doc.line,
                opts,
                injected: 0,
                warnings: Vec::new(),
            };
            inject_object(&mut value, "", &mut cx)?;
            changed |= cx.injected > 0;
            out.injected += cx.injected;
            out.warnings.extend(cx.warnings);
            docs.push(value);
        }
        if changed {
            for (j, value) in docs.iter().enumerate() {
                if j > 0 {
                    out.text.push_str("---\n");
                }
                out.text.push_str(&yaml::to_yaml(value));
            }
        } else {
            out.text.push_str(&piece.text);
        }
    }
    Ok(out)
}

/// One document being injected: where it came from, for messages.
struct Doc<'a> {
    file: &'a str,
    positions: &'a yaml::Positions,
    line: u32,
    opts: &'a InjectOptions,
    injected: usize,
    warnings: Vec<Diagnostic>,
}

impl Doc<'_> {
    fn diagnostic(
        &self,
        severity: Severity,
        resource: &str,
        field: String,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.to_string(),
            line: yaml::line_of(self.positions, &field, self.line),
            resource: Some(resource.to_string()),
            field,
            message: message.into(),
        }
    }
}

/// Where the pod template of a workload kind is (`None`: not a workload).
fn pod_template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
        | ("batch", "Job")
        | ("apps.openshift.io", "DeploymentConfig") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// `Kind ns/name` (namespace `default` when none is written), as sluice's messages name objects.
fn label(obj: &Map<String, Value>) -> String {
    let meta = obj.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let ns = match field("namespace") {
        "" => "default",
        ns => ns,
    };
    match field("name") {
        "" => format!("{kind} {ns}/{}", field("generateName")),
        name => format!("{kind} {ns}/{name}"),
    }
}

/// Injects into one object at `base` (its field path in the document: empty, or `items[3]` in
/// a `List`). Objects that are not workloads are left alone.
fn inject_object(value: &mut Value, base: &str, cx: &mut Doc<'_>) -> Result<(), Diagnostic> {
    let Value::Object(obj) = value else {
        return Ok(());
    };
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let resource = label(obj);
    if kind == "List" && !api_version.contains('/') {
        if let Some(Value::Array(items)) = obj.get_mut("items") {
            for (i, item) in items.iter_mut().enumerate() {
                inject_object(item, &yaml::join(base, &format!("items[{i}]")), cx)?;
            }
        }
        return Ok(());
    }
    let Some(path) = pod_template_path(&api_version, &kind) else {
        return Ok(());
    };
    let meta = obj.get("metadata");
    let workload = WorkloadName {
        name: meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        namespace: meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    };
    // Walk to the pod template.
    let mut template_path = base.to_string();
    let mut at: &mut Value = value;
    for step in path {
        template_path = yaml::join(&template_path, step);
        let Value::Object(map) = at else {
            unreachable!("checked: objects all the way down");
        };
        at = match map.get_mut(*step) {
            Some(v @ Value::Object(_)) => v,
            None | Some(Value::Null) => {
                return Err(cx.diagnostic(
                    Severity::Error,
                    &resource,
                    template_path,
                    format!("a {kind} needs a pod template here"),
                ))
            }
            Some(_) => {
                return Err(cx.diagnostic(
                    Severity::Error,
                    &resource,
                    template_path,
                    "must be a mapping",
                ))
            }
        };
    }
    let Value::Object(template) = at else {
        return Err(cx.diagnostic(
            Severity::Error,
            &resource,
            template_path,
            "must be a mapping",
        ));
    };
    let mut warnings = Vec::new();
    let outcome = pod::inject(template, &workload, cx.opts, &mut warnings);
    for w in warnings {
        let field = yaml::join(&template_path, &w.field);
        let d = cx.diagnostic(Severity::Warning, &resource, field, w.message);
        cx.warnings.push(d);
    }
    match outcome {
        Ok(PodOutcome::Injected) => cx.injected += 1,
        Ok(PodOutcome::Skipped(why)) => {
            let d = cx.diagnostic(
                Severity::Warning,
                &resource,
                template_path,
                format!("not injected: {why}"),
            );
            cx.warnings.push(d);
        }
        Err(problem) => {
            return Err(cx.diagnostic(
                Severity::Error,
                &resource,
                yaml::join(&template_path, &problem.field),
                problem.message,
            ))
        }
    }
    Ok(())
}

/// Reads `--mesh-config`: a MeshConfig (the `mesh` value of the `istio` ConfigMap) or the
/// ConfigMap itself. Returns its `defaultConfig` (the ProxyConfig every pod starts from) and a
/// warning for each of its fields that sluice does not apply; an error for a field it applies
/// whose value is wrong.
pub fn load_mesh_config(
    file: &Path,
    text: &str,
) -> Result<(Map<String, Value>, Vec<Diagnostic>), Diagnostic> {
    let name = file.display().to_string();
    let fail = |line: u32, field: &str, message: String| Diagnostic {
        severity: Severity::Error,
        file: name.clone(),
        line,
        resource: None,
        field: field.to_string(),
        message,
    };
    let docs = yaml::parse_documents(text, 0).map_err(|e| fail(e.line, "", e.message))?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok((Map::new(), Vec::new()));
    };
    let (mesh, base, positions, line) = if doc.value.get("kind") == Some(&Value::from("ConfigMap"))
    {
        let line = yaml::line_of(&doc.positions, "data.mesh", doc.line);
        let Some(text) = doc.value.pointer("/data/mesh").and_then(Value::as_str) else {
            return Err(fail(
                line,
                "data.mesh",
                "the ConfigMap has no data.mesh (the MeshConfig as YAML text)".to_string(),
            ));
        };
        match yaml::parse_documents(text, line)
            .map_err(|e| fail(e.line, "data.mesh", e.message))?
            .into_iter()
            .next()
        {
            Some(mesh) => (Some(mesh.value), "data.mesh.", mesh.positions, mesh.line),
            None => (None, "data.mesh.", doc.positions, line),
        }
    } else {
        (Some(doc.value), "", doc.positions, doc.line)
    };
    let default_config = match mesh.as_ref().and_then(|m| m.get("defaultConfig")) {
        None | Some(Value::Null) => return Ok((Map::new(), Vec::new())),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(fail(
                line,
                &format!("{base}defaultConfig"),
                "must be a mapping (a ProxyConfig)".to_string(),
            ))
        }
    };
    let field = format!("{base}defaultConfig");
    let line = yaml::line_of(&positions, "defaultConfig", line);
    let mut proxy = settings::ProxySettings::default();
    let (_, warnings) = settings::apply_proxy_config(&mut proxy, &default_config)
        .map_err(|m| fail(line, &field, m))?;
    let warnings = warnings
        .into_iter()
        .map(|message| Diagnostic {
            severity: Severity::Warning,
            file: name.clone(),
            line,
            resource: None,
            field: field.clone(),
            message,
        })
        .collect();
    Ok((default_config, warnings))
}
