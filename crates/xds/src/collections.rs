//! The collections this crate carries with a schema: istiod's type URL for each, the message of
//! its body, and how to turn that message into proto3 JSON and back.

use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::pb::istio::{mesh, networking, security, telemetry};
use crate::schema::FieldError;

/// A collection this crate can carry: istiod's type URL (what a `DiscoveryRequest` asks for and
/// the `DiscoveryResponse` echoes), the kind, and the type URL of the `Any` that holds the
/// Istio message.
#[derive(Debug)]
pub struct Collection {
    /// `networking.istio.io/v1/ServiceEntry`: the group/version/kind string istiod serves the
    /// collection under (its main API version).
    pub type_url: &'static str,
    /// `ServiceEntry`.
    pub kind: &'static str,
    /// `type.googleapis.com/istio.networking.v1alpha3.ServiceEntry`.
    pub body_type_url: &'static str,
    /// The same collection under its other API versions (`networking.istio.io/v1alpha3/…`,
    /// what istiod before 1.24 served and clients of that age still ask for). [`collection`]
    /// finds a collection by any of them.
    pub aliases: &'static [&'static str],
    /// Whether each resource travels inside an `istio.mcp.v1alpha1.Resource` with its name and
    /// labels. False only for MeshConfig, which istiod sends as the bare message, unnamed.
    pub mcp_envelope: bool,
    /// Whether fields this schema lacks are dropped (JSON → message) and skipped (bytes →
    /// message) instead of refused. True only for MeshConfig: sluice reads a few of its dozens
    /// of fields, as its own mesh config decoding does, while for Istio's kinds a field that
    /// cannot be carried must not silently disappear.
    pub lenient: bool,
    pub(crate) codec: Codec,
}

/// A body message's conversions, instantiated for its Rust type.
#[derive(Debug)]
pub(crate) struct Codec {
    /// The message's full name, `.istio.networking.v1alpha3.ServiceEntry`.
    pub message: &'static str,
    pub to_wire: fn(Value) -> Result<Vec<u8>, FieldError>,
    pub from_wire: fn(&[u8]) -> Result<Value, FromWire>,
}

/// Why bytes did not become JSON.
#[derive(Debug)]
pub(crate) enum FromWire {
    Decode(prost::DecodeError),
    Json(serde_json::Error),
}

const fn codec<M>(message: &'static str) -> Codec
where
    M: Message + Default + Serialize + DeserializeOwned,
{
    Codec {
        message,
        to_wire: to_wire::<M>,
        from_wire: from_wire::<M>,
    }
}

/// JSON (already prepared by `schema::prepare`) → the message's bytes, through pbjson.
fn to_wire<M: Message + DeserializeOwned>(json: Value) -> Result<Vec<u8>, FieldError> {
    let message: M = serde_path_to_error::deserialize(json).map_err(|e| FieldError {
        path: spec_path(&e.path().to_string()),
        message: e.into_inner().to_string(),
    })?;
    Ok(message.encode_to_vec())
}

/// The message's bytes → pbjson's proto3 JSON (to be finished by `schema::finish`).
fn from_wire<M: Message + Default + Serialize>(bytes: &[u8]) -> Result<Value, FromWire> {
    let message = M::decode(bytes).map_err(FromWire::Decode)?;
    serde_json::to_value(&message).map_err(FromWire::Json)
}

/// serde_path_to_error's path (`http[0].timeout`, `.` at the root) under `spec`.
fn spec_path(path: &str) -> String {
    match path {
        "" | "." => "spec".to_string(),
        p if p.starts_with('[') => format!("spec{p}"),
        p => format!("spec.{p}"),
    }
}

/// The `Any` type URL of an MCP resource, the envelope of every collection but MeshConfig.
pub const MCP_RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";

/// The body type URL of collections without a schema here (see the crate docs).
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// Bodies of collections without a schema: any JSON object.
pub(crate) const STRUCT_CODEC: Codec = codec::<pbjson_types::Struct>(".google.protobuf.Struct");

macro_rules! networking {
    ($kind:literal, $message:ty) => {
        Collection {
            type_url: concat!("networking.istio.io/v1/", $kind),
            kind: $kind,
            body_type_url: concat!("type.googleapis.com/istio.networking.v1alpha3.", $kind),
            aliases: &[
                concat!("networking.istio.io/v1alpha3/", $kind),
                concat!("networking.istio.io/v1beta1/", $kind),
            ],
            mcp_envelope: true,
            lenient: false,
            codec: codec::<$message>(concat!(".istio.networking.v1alpha3.", $kind)),
        }
    };
}

macro_rules! security {
    ($kind:literal, $message:ty) => {
        Collection {
            type_url: concat!("security.istio.io/v1/", $kind),
            kind: $kind,
            body_type_url: concat!("type.googleapis.com/istio.security.v1beta1.", $kind),
            aliases: &[concat!("security.istio.io/v1beta1/", $kind)],
            mcp_envelope: true,
            lenient: false,
            codec: codec::<$message>(concat!(".istio.security.v1beta1.", $kind)),
        }
    };
}

/// Every collection with a schema here, in istiod's order of kinds.
pub const COLLECTIONS: &[Collection] = &[
    networking!("ServiceEntry", networking::v1alpha3::ServiceEntry),
    networking!("VirtualService", networking::v1alpha3::VirtualService),
    networking!("DestinationRule", networking::v1alpha3::DestinationRule),
    networking!("Gateway", networking::v1alpha3::Gateway),
    networking!("Sidecar", networking::v1alpha3::Sidecar),
    networking!("WorkloadEntry", networking::v1alpha3::WorkloadEntry),
    security!("PeerAuthentication", security::v1beta1::PeerAuthentication),
    security!(
        "AuthorizationPolicy",
        security::v1beta1::AuthorizationPolicy
    ),
    security!(
        "RequestAuthentication",
        security::v1beta1::RequestAuthentication
    ),
    Collection {
        type_url: "telemetry.istio.io/v1/Telemetry",
        kind: "Telemetry",
        body_type_url: "type.googleapis.com/istio.telemetry.v1alpha1.Telemetry",
        aliases: &["telemetry.istio.io/v1alpha1/Telemetry"],
        mcp_envelope: true,
        lenient: false,
        codec: codec::<telemetry::v1alpha1::Telemetry>(".istio.telemetry.v1alpha1.Telemetry"),
    },
    Collection {
        // istiod's GroupVersionKind for MeshConfig has no group; its String() writes the
        // empty group as "core".
        type_url: "core/v1alpha1/MeshConfig",
        kind: "MeshConfig",
        body_type_url: "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig",
        aliases: &["mesh.istio.io/v1alpha1/MeshConfig"],
        mcp_envelope: false,
        lenient: true,
        codec: codec::<mesh::v1alpha1::MeshConfig>(".istio.mesh.v1alpha1.MeshConfig"),
    },
];

/// The collection served under `type_url` (its main type URL or one of its aliases).
pub fn collection(type_url: &str) -> Option<&'static Collection> {
    COLLECTIONS
        .iter()
        .find(|c| c.type_url == type_url || c.aliases.contains(&type_url))
}

/// The collection of a kind (`VirtualService`).
pub fn collection_for_kind(kind: &str) -> Option<&'static Collection> {
    COLLECTIONS.iter().find(|c| c.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_names_a_message_of_the_schema() {
        for c in COLLECTIONS {
            let name = c.body_type_url.rsplit('/').next().unwrap();
            assert_eq!(c.codec.message.trim_start_matches('.'), name, "{}", c.kind);
            assert!(crate::schema::prepare(
                c.codec.message,
                Value::Object(Default::default()),
                false,
                "spec"
            )
            .is_ok());
        }
        assert_eq!(spec_path("."), "spec");
        assert_eq!(spec_path("http[0].timeout"), "spec.http[0].timeout");
    }

    #[test]
    fn lookups_by_alias_and_kind() {
        let se = collection("networking.istio.io/v1alpha3/ServiceEntry").unwrap();
        assert_eq!(se.type_url, "networking.istio.io/v1/ServiceEntry");
        assert!(std::ptr::eq(
            se,
            collection_for_kind("ServiceEntry").unwrap()
        ));
        assert_eq!(
            collection("security.istio.io/v1beta1/AuthorizationPolicy")
                .unwrap()
                .kind,
            "AuthorizationPolicy"
        );
        assert_eq!(
            collection("core/v1alpha1/MeshConfig").unwrap().kind,
            "MeshConfig"
        );
        assert!(collection("core/v1/Service").is_none());
        assert!(collection_for_kind("Service").is_none());
    }
}
