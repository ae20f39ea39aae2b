//! Config resources → the collections and MCP objects istiod would serve for them.
//!
//! Istio's kinds go in their own collections with the Istio message as body; the mesh config
//! (the `istio-system/istio` ConfigMap's `data.mesh`) goes as `mesh.istio.io/v1alpha1/MeshConfig`
//! as istiod sends it. Kubernetes kinds have no Istio message: sluice control sends them in
//! collections named as istiod names their kinds (`core/v1/Service`), with the object's fields
//! as a `google.protobuf.Struct` body, for sluice proxies.
//!
//! Each resource also gets its audience: a Secret only goes to proxies of its own namespace that
//! proved who they are with a client certificate (the mutual-TLS port), as istiod's SDS serves
//! a gateway only its own namespace's credentials, so a private key never crosses the plaintext
//! port; a resource scoped by `exportTo` only to the namespaces it is exported to.

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_api::{Resource, Spec};
use sluice_model::registry::{visibility, ExportTo};
use sluice_xds::server::Audience;
use sluice_xds::McpObject;

/// The mesh config's collection (`core/v1alpha1/MeshConfig`, as istiod serves it).
pub fn mesh_config_collection() -> &'static str {
    sluice_xds::collection_for_kind("MeshConfig").map_or("core/v1alpha1/MeshConfig", |c| c.type_url)
}

/// Who may receive `res`.
pub fn audience(res: &Resource) -> Audience {
    if let Spec::Secret { .. } = res.spec {
        return Audience::AuthenticatedIn(res.meta.namespace.clone());
    }
    match visibility(res) {
        None | Some(ExportTo::All) => Audience::Everyone,
        Some(ExportTo::Namespaces(namespaces)) if namespaces.is_empty() => Audience::Nobody,
        Some(ExportTo::Namespaces(namespaces)) => Audience::Namespaces(Arc::from(namespaces)),
    }
}

/// The collection `res` is served in, and its MCP object; `None` for what is not served
/// (ConfigMaps other than the mesh config, the kinds only `sluice analyze` reads).
pub fn mcp_object(res: &Resource) -> Option<(String, McpObject)> {
    let meta = &res.meta;
    let object = |name: String, spec: Value| McpObject {
        name,
        labels: meta
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: meta.annotations.clone(),
        version: String::new(),
        spec,
    };
    let namespaced = format!("{}/{}", meta.namespace, meta.name);
    match &res.spec {
        Spec::ConfigMap { mesh, .. } => {
            let mesh = mesh.as_ref()?;
            let is_mesh =
                (meta.namespace.as_str(), meta.name.as_str()) == sluice_model::mesh::MESH_CONFIGMAP;
            if !is_mesh {
                return None;
            }
            let spec = serde_json::to_value(mesh.for_wire()).ok()?;
            Some((
                mesh_config_collection().to_string(),
                object(String::new(), spec),
            ))
        }
        Spec::Service(_)
        | Spec::Endpoints(_)
        | Spec::Ingress(_)
        | Spec::IngressClass(_)
        | Spec::Secret { .. } => {
            let collection = sluice_proxy::xds_source::kubernetes_collection(res.kind)?;
            let fields = match &res.spec {
                // Already the object's fields (`subsets`; `type` and base64 `data`).
                Spec::Endpoints(_) | Spec::Secret { .. } => res.spec_json()?,
                _ => json!({ "spec": res.spec_json()? }),
            };
            Some((collection.to_string(), object(namespaced, fields)))
        }
        // Read only by `sluice analyze`; a Gateway API Gateway is not Istio's.
        _ if res.kind.is_analysis_only() => None,
        _ => {
            let collection = sluice_xds::collection_for_kind(res.kind.as_str())?;
            Some((
                collection.type_url.to_string(),
                object(namespaced, res.spec_json()?),
            ))
        }
    }
}
