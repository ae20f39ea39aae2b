//! What users write: the Istio networking and security APIs and the Kubernetes objects that go
//! with it, decoded from YAML with the line of every field, and validated as Istio's admission
//! webhook does.

pub mod decode;
pub mod diagnostics;
pub mod duration;
pub mod expression;
pub mod kube;
pub mod mesh;
pub mod networking;
pub mod resource;
pub mod security;
pub mod unenforced;
pub mod validate;
pub mod work;

pub use decode::{decode_bytes, decode_file, decode_str, load_paths, LoadResult};
pub use resource::{
    Diagnostic, FieldLines, Kind, ObjectMeta, Origin, Resource, ResourceFields, Severity, Spec,
};
pub use validate::validate;
