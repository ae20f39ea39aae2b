//! What can go wrong carrying a resource, said so that the reader knows which resource, which
//! field, and whose side to look at.

/// A resource that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An entry of a response is not the envelope its collection is carried in (an
    /// `istio.mcp.v1alpha1.Resource`, or for MeshConfig the bare message).
    #[error(
        "{type_url}: a resource is a {got:?}, expected a {expected:?}; the control plane \
         sends something other than Istio's MCP-over-XDS for this collection"
    )]
    OuterType {
        type_url: String,
        expected: String,
        got: String,
    },
    /// Bytes that do not decode as the message they claim to be.
    #[error("{type_url} {name}: {what} is not a valid {message}: {detail}")]
    Malformed {
        type_url: String,
        /// The resource's name, or `(unnamed)` when not even that could be read.
        name: String,
        what: &'static str,
        message: String,
        detail: String,
    },
    /// An MCP resource without metadata, so without a name.
    #[error("{type_url}: a resource has no metadata, so no name (istiod always sends one)")]
    NoMetadata { type_url: String },
    /// An MCP resource without a body.
    #[error("{type_url} {name}: the resource has no body")]
    NoBody { type_url: String, name: String },
    /// The body holds another message than the collection carries.
    #[error("{type_url} {name}: the body is a {got:?}, but this collection carries {expected:?}")]
    BodyType {
        type_url: String,
        name: String,
        expected: String,
        got: String,
    },
    /// A field of the spec is not what the schema allows: unknown, of the wrong type, out of
    /// range, or (received) sent by a newer Istio API than sluice knows.
    #[error("{kind} {name}: {path}: {message}")]
    Field {
        type_url: String,
        /// `VirtualService`, or the last part of the type URL of a collection sluice has no
        /// schema for.
        kind: String,
        name: String,
        /// `spec.http[0].timeout`.
        path: String,
        message: String,
    },
}

impl WireError {
    /// The collection the resource belongs to.
    pub fn type_url(&self) -> &str {
        match self {
            WireError::OuterType { type_url, .. }
            | WireError::Malformed { type_url, .. }
            | WireError::NoMetadata { type_url }
            | WireError::NoBody { type_url, .. }
            | WireError::BodyType { type_url, .. }
            | WireError::Field { type_url, .. } => type_url,
        }
    }

    /// The resource's name, when it got far enough to have one.
    pub fn resource_name(&self) -> Option<&str> {
        match self {
            WireError::Malformed { name, .. }
            | WireError::NoBody { name, .. }
            | WireError::BodyType { name, .. }
            | WireError::Field { name, .. } => Some(name),
            WireError::OuterType { .. } | WireError::NoMetadata { .. } => None,
        }
    }
}
