//! The control-plane wire: Envoy's Aggregated Discovery Service carrying Istio config as
//! istiod serves it ("MCP over XDS"), for `sluice control` (server) and for proxies started with
//! `--xds` (client). This crate knows the protocol and the schema, no Istio semantics.
//!
//! # What istiod puts on the wire
//!
//! Read from istio/istio (the snapshot of 2026-08, commit 86c9f01f):
//!
//! - `pilot/pkg/networking/apigen/apigen.go` (`APIGenerator.Generate`): a request's `type_url`
//!   is a `group/version/kind` string; istiod lists its config store for exactly that
//!   GroupVersionKind, and answers with one entry per object: a `discovery.Resource` named
//!   `namespace/name` whose `Any` is an `istio.mcp.v1alpha1.Resource`
//!   (`type.googleapis.com/istio.mcp.v1alpha1.Resource`). In a state-of-the-world
//!   `DiscoveryResponse` the `resources` are those `Any`s, and `type_url` echoes the request.
//! - `pkg/config/conversion.go` (`PilotConfigToResource`): the MCP resource's `metadata.name` is
//!   `namespace + "/" + name`, `version` the resourceVersion, `create_time` the creation
//!   timestamp, `labels` and `annotations` the object's; `body` is `config.ToProto(spec)`
//!   (`pkg/config/model.go`): an `Any` of the Istio API message, `type.googleapis.com/` + its
//!   full name (`pilot/pkg/util/protoconv/protoconv.go`) — or, for a spec that is not a proto
//!   message, its JSON as a `google.protobuf.Struct`.
//! - `pkg/config/schema/collections/collections.gen.go` and `gvk/resources.gen.go`: the main
//!   version of every networking and security kind is now `v1`
//!   (`networking.istio.io/v1/ServiceEntry`, `security.istio.io/v1/AuthorizationPolicy`), with
//!   `v1alpha3`/`v1beta1` only as aliases for Kubernetes (since Istio 1.24: commit 86057475a6e,
//!   "Update to read CRDs from `v1`", in `pkg/config/schema/metadata.yaml`; before it the main
//!   versions were `v1alpha3` and `v1beta1`). The config store
//!   (`pilot/pkg/config/kube/crdclient/client.go`, `List`) is keyed by the main GVK, so current
//!   istiod answers `networking.istio.io/v1alpha3/...` with nothing. The body messages keep their
//!   proto packages: `istio.networking.v1alpha3.*`, `istio.security.v1beta1.*`.
//! - MeshConfig is special (apigen.go): its type URL is `gvk.MeshConfig.String()`, i.e.
//!   `core/v1alpha1/MeshConfig` (an empty group is written `core`, `pkg/config/model.go`
//!   `CanonicalGroup`), and the response holds the `istio.mesh.v1alpha1.MeshConfig` itself as
//!   the `Any`, with no MCP envelope and no name. `pkg/adsc/adsc.go` (istiod's own client, used
//!   when istiod reads config from another control plane) reads it that way, and asks for
//!   MeshConfig plus every `collections.Pilot` GVK (`ConfigInitialRequests`).
//! - `pkg/adsc/adsc.go` (`handleMCP`, `mcpToPilot`): a client unpacks each `Any` as an
//!   `mcp.Resource` and splits `metadata.name` at `/` into namespace and name.
//!
//! [`COLLECTIONS`] lists these type URLs (with the older versions as aliases), and
//! [`encode_resource`] / [`decode_resource`] build and read exactly these `Any`s.
//!
//! # Collections without a schema here
//!
//! A type URL not in [`COLLECTIONS`] is carried with a `google.protobuf.Struct` body
//! (`type.googleapis.com/google.protobuf.Struct`) in the same MCP envelope: sluice's own
//! extension for the Kubernetes kinds that have no Istio proto (Service, Endpoints, ConfigMap,
//! Secret, Ingress), following what istiod's `config.ToProto` does for non-proto specs. Numbers
//! in a Struct are doubles; integral ones are decoded as JSON integers (`80`, not `80.0`).
//!
//! # JSON
//!
//! [`McpObject::spec`] is proto3 JSON as a YAML `spec:` holds it: camelCase names, enums by
//! name, durations as `"5s"`, wrapper types as plain values. Three deliberate differences from
//! what pbjson alone gives, so that sluice's decoder reads back what was meant
//! (`schema.rs`): 64-bit integers are JSON numbers, not strings; an enum is written out even
//! at its zero value (`outboundTrafficPolicy: {mode: REGISTRY_ONLY}`, never `{}`); `null`s are
//! taken as absent fields when encoding.
//!
//! # The schema
//!
//! `proto/` holds sluice's own schema of the Istio messages it carries, wire-compatible with
//! Istio's API (see `proto/README.md`); `build.rs` compiles it without protoc.

pub mod ca;
mod collections;
mod error;
pub mod pb;
mod schema;

pub mod client;
pub mod server;
mod server_delta;
mod server_responses;
mod server_wire;

pub use server_wire::AdsService;

use std::collections::BTreeMap;

use prost::Message as _;
use serde_json::Value;

pub use collections::{
    collection, collection_for_kind, Collection, COLLECTIONS, MCP_RESOURCE_TYPE_URL,
    STRUCT_TYPE_URL,
};
pub use error::WireError;

/// The node a proxy identifies itself with.
pub use envoy_types::pb::envoy::config::core::v3::Node;
/// Envoy's discovery service: `DiscoveryRequest`, `DiscoveryResponse`, the delta messages,
/// `Resource`, and the `aggregated_discovery_service_{server,client}` gRPC modules.
pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
/// The `Any` of Envoy's discovery messages: what `DiscoveryResponse.resources` and a delta
/// `Resource` hold. envoy-types generates its own, distinct from `prost_types::Any`.
pub use envoy_types::pb::google::protobuf::Any;
/// `google.rpc.Status`, a NACK's `error_detail`.
pub use envoy_types::pb::google::rpc::Status;
/// [`Status`] under a name that does not clash with `tonic::Status`.
pub use envoy_types::pb::google::rpc::Status as RpcStatus;

/// The versions dependants must build against: one prost, one tonic. `pbjson_types` holds the
/// well-known types of the generated Istio messages ([`pb`]).
pub use {envoy_types, pbjson_types, prost, prost_types, tonic};

/// One Istio config object as carried in MCP: what the Resource's metadata and body hold.
#[derive(Debug, Clone, PartialEq)]
pub struct McpObject {
    /// `namespace/name` as istiod writes it (just `name` for cluster-scoped ones; empty for
    /// MeshConfig, which istiod sends unnamed).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// metadata.version (istiod puts the resourceVersion here); may be empty.
    pub version: String,
    /// The body as proto3 JSON (what the YAML `spec:` holds).
    pub spec: Value,
}

/// An `Any`, whichever crate generated it: Envoy's ([`Any`]) and prost-types' both decode.
pub trait AnyRef {
    fn type_url(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl AnyRef for Any {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

impl AnyRef for prost_types::Any {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// The `Any` that goes in `DiscoveryResponse.resources` for `obj` in the collection `type_url`:
/// an `istio.mcp.v1alpha1.Resource` (`type.googleapis.com/istio.mcp.v1alpha1.Resource`) with
/// `metadata {name, labels, annotations, version}` and `body` the Istio message built from
/// `obj.spec`; for MeshConfig the bare message, as istiod sends it (name and labels are not
/// carried). A collection without a schema here carries the spec as a `google.protobuf.Struct`.
pub fn encode_resource(type_url: &str, obj: &McpObject) -> Result<Any, WireError> {
    let found = collection(type_url);
    let (codec, lenient, body_type_url) = match found {
        Some(c) => (&c.codec, c.lenient, c.body_type_url),
        None => (&collections::STRUCT_CODEC, false, STRUCT_TYPE_URL),
    };
    let field_error = |e: schema::FieldError| WireError::Field {
        type_url: type_url.to_string(),
        kind: kind_of(type_url),
        name: obj.name.clone(),
        path: e.path,
        message: e.message,
    };
    let json =
        schema::prepare(codec.message, obj.spec.clone(), lenient, "spec").map_err(field_error)?;
    let body = (codec.to_wire)(json).map_err(field_error)?;
    if found.is_some_and(|c| !c.mcp_envelope) {
        return Ok(Any {
            type_url: body_type_url.to_string(),
            value: body,
        });
    }
    let resource = pb::istio::mcp::v1alpha1::Resource {
        metadata: Some(pb::istio::mcp::v1alpha1::Metadata {
            name: obj.name.clone(),
            create_time: None,
            version: obj.version.clone(),
            labels: obj.labels.clone(),
            annotations: obj.annotations.clone(),
        }),
        body: Some(pbjson_types::Any {
            type_url: body_type_url.to_string(),
            value: body.into(),
        }),
    };
    Ok(Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: resource.encode_to_vec(),
    })
}

/// The reverse of [`encode_resource`], for an entry of a `DiscoveryResponse` of `type_url`.
/// Checks the outer and the body `Any` type URLs, and refuses fields and enum values that
/// sluice's schema does not have (except in MeshConfig) rather than dropping them.
pub fn decode_resource(type_url: &str, any: &impl AnyRef) -> Result<McpObject, WireError> {
    let found = collection(type_url);
    let (codec, lenient, body_type_url) = match found {
        Some(c) => (&c.codec, c.lenient, c.body_type_url),
        None => (&collections::STRUCT_CODEC, false, STRUCT_TYPE_URL),
    };
    let outer = any.type_url();
    let bare = found.is_some_and(|c| !c.mcp_envelope) && same_type(outer, body_type_url);
    let (object, body) = if bare {
        let object = McpObject {
            name: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            version: String::new(),
            spec: Value::Null,
        };
        (object, any.value().to_vec())
    } else {
        if !same_type(outer, MCP_RESOURCE_TYPE_URL) {
            let expected = match found {
                Some(c) if !c.mcp_envelope => c.body_type_url,
                _ => MCP_RESOURCE_TYPE_URL,
            };
            return Err(WireError::OuterType {
                type_url: type_url.to_string(),
                expected: expected.to_string(),
                got: outer.to_string(),
            });
        }
        let resource = pb::istio::mcp::v1alpha1::Resource::decode(any.value()).map_err(|e| {
            WireError::Malformed {
                type_url: type_url.to_string(),
                name: "(unnamed)".to_string(),
                what: "the resource",
                message: "istio.mcp.v1alpha1.Resource".to_string(),
                detail: e.to_string(),
            }
        })?;
        let metadata = resource.metadata.ok_or_else(|| WireError::NoMetadata {
            type_url: type_url.to_string(),
        })?;
        let body = resource.body.ok_or_else(|| WireError::NoBody {
            type_url: type_url.to_string(),
            name: metadata.name.clone(),
        })?;
        if !same_type(&body.type_url, body_type_url) {
            return Err(WireError::BodyType {
                type_url: type_url.to_string(),
                name: metadata.name,
                expected: body_type_url.to_string(),
                got: body.type_url,
            });
        }
        let object = McpObject {
            name: metadata.name,
            labels: metadata.labels,
            annotations: metadata.annotations,
            version: metadata.version,
            spec: Value::Null,
        };
        (object, body.value.to_vec())
    };
    let field_error = |e: schema::FieldError| WireError::Field {
        type_url: type_url.to_string(),
        kind: kind_of(type_url),
        name: object.name.clone(),
        path: e.path,
        message: e.message,
    };
    schema::scan(codec.message, &body, lenient, "spec").map_err(field_error)?;
    let mut spec = (codec.from_wire)(&body).map_err(|e| match e {
        collections::FromWire::Decode(e) => WireError::Malformed {
            type_url: type_url.to_string(),
            name: object.name.clone(),
            what: "the body",
            message: codec.message.trim_start_matches('.').to_string(),
            detail: e.to_string(),
        },
        collections::FromWire::Json(e) => field_error(schema::FieldError {
            path: "spec".to_string(),
            message: format!("cannot be written as JSON: {e}"),
        }),
    })?;
    if found.is_some() {
        schema::finish(codec.message, &mut spec);
    } else {
        schema::integral_numbers(&mut spec);
    }
    Ok(McpObject { spec, ..object })
}

/// Whether two `Any` type URLs name the same message: only the part after the last `/`
/// counts (the prefix is conventionally `type.googleapis.com/`, but any is allowed).
fn same_type(a: &str, b: &str) -> bool {
    a.rsplit('/').next() == b.rsplit('/').next()
}

/// The kind of a collection, for messages: its own, or the last part of an unknown type URL.
fn kind_of(type_url: &str) -> String {
    match collection(type_url) {
        Some(c) => c.kind.to_string(),
        None => type_url.rsplit('/').next().unwrap_or(type_url).to_string(),
    }
}
