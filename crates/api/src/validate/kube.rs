//! Kubernetes objects: the checks the API server (or Istio's ingress controller) would make on
//! the fields sluice uses, and the mesh config.

use std::collections::BTreeSet;

use crate::kube::{EndpointSubset, IngressSpec, IntOrString, ServiceSpec};
use crate::mesh::MeshConfig;

use super::names;
use super::Report;

const PATH_TYPES: [&str; 3] = ["Exact", "Prefix", "ImplementationSpecific"];
const OUTBOUND_MODES: [&str; 3] = ["ALLOW_ANY", "REGISTRY_ONLY", "ALLOW_ANY_DYNAMIC_DNS"];

pub(super) fn service(r: &mut Report<'_>, svc: &ServiceSpec) {
    let mut port_names = BTreeSet::new();
    for (i, port) in svc.ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        r.check(format!("{base}.port"), names::port(port.port));
        if let Some(IntOrString::Int(t)) = &port.target_port {
            r.check(format!("{base}.targetPort"), names::port(*t));
        }
        let name = port.name.as_deref().unwrap_or("");
        if svc.ports.len() > 1 && name.is_empty() {
            r.error(
                format!("{base}.name"),
                "port name is required when a Service has several ports",
            );
        }
        if !name.is_empty() && !port_names.insert(name) {
            r.error(
                format!("{base}.name"),
                format!("duplicate port name {name:?}"),
            );
        }
    }
}

pub(super) fn endpoints(r: &mut Report<'_>, subsets: &[EndpointSubset]) {
    for (i, subset) in subsets.iter().enumerate() {
        for (j, address) in subset.addresses.iter().enumerate() {
            r.check(
                format!("subsets[{i}].addresses[{j}].ip"),
                names::ip_address(&address.ip),
            );
        }
        for (j, port) in subset.ports.iter().enumerate() {
            r.check(
                format!("subsets[{i}].ports[{j}].port"),
                names::port(port.port),
            );
        }
    }
}

pub(super) fn ingress(r: &mut Report<'_>, ing: &IngressSpec) {
    if ing.default_backend.is_some() {
        r.warn(
            "spec.defaultBackend",
            "defaultBackend is not supported by Istio and is ignored",
        );
    }
    for (i, tls) in ing.tls.iter().enumerate() {
        if tls.secret_name.as_deref().is_none_or(str::is_empty) {
            r.warn(
                format!("spec.tls[{i}]"),
                "tls entry without secretName is ignored",
            );
        }
    }
    for (i, rule) in ing.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        let Some(http) = &rule.http else {
            r.warn(base, "rule without http paths is ignored");
            continue;
        };
        for (j, path) in http.paths.iter().enumerate() {
            let pbase = format!("{base}.http.paths[{j}]");
            if let Some(t) = path.path_type.as_deref() {
                if !PATH_TYPES.contains(&t) {
                    r.error(
                        format!("{pbase}.pathType"),
                        format!("unsupported pathType {t:?}; expected Exact, Prefix or ImplementationSpecific"),
                    );
                }
            }
            let backend = format!("{pbase}.backend");
            match path.backend.service() {
                None if path.backend.resource.is_some() => {
                    r.warn(
                        backend,
                        "resource backends are not supported and are ignored",
                    );
                }
                None => r.error(backend, "backend service is required"),
                Some((name, port)) => {
                    if name.is_empty() {
                        r.error(
                            format!("{backend}.service.name"),
                            "backend service name is required",
                        );
                    }
                    match port {
                        None => r.error(backend, "backend service port is required"),
                        Some(IntOrString::Int(n)) => r.check(backend, names::port(n)),
                        Some(IntOrString::String(s)) if s.is_empty() => {
                            r.error(backend, "backend service port is required")
                        }
                        Some(IntOrString::String(_)) => {}
                    }
                }
            }
        }
    }
}

/// The `mesh` key of the `istio` ConfigMap; errors point at `data.mesh`.
pub(super) fn mesh_config(r: &mut Report<'_>, mesh: &MeshConfig) {
    if let Some(mode) = mesh
        .outbound_traffic_policy
        .as_ref()
        .and_then(|p| p.mode.as_deref())
    {
        if !OUTBOUND_MODES.contains(&mode) {
            r.error(
                "data.mesh",
                format!(
                    "invalid mesh config: outboundTrafficPolicy.mode {mode}; expected one of {}",
                    OUTBOUND_MODES.join(", ")
                ),
            );
        }
    }
    if let Some(enc) = mesh.access_log_encoding.as_deref() {
        if enc != "TEXT" && enc != "JSON" {
            r.error(
                "data.mesh",
                format!("invalid mesh config: accessLogEncoding {enc}; expected TEXT or JSON"),
            );
        }
    }
    if let Some(t) = &mesh.connect_timeout {
        if let Err(e) = names::duration(t) {
            r.error(
                "data.mesh",
                format!("invalid mesh config: connectTimeout: {e}"),
            );
        }
    }
    for problem in mesh.tracing_problems() {
        r.error("data.mesh", format!("invalid mesh config: {problem}"));
    }
    for warning in mesh.tracing_warnings() {
        r.warn("data.mesh", warning);
    }
}
