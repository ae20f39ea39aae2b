//! sluice in a Kubernetes cluster.
//!
//! - [`source`]: the cluster's API as a config source for `sluice control --kube` (kube-rs
//!   reflectors over the objects istiod watches for traffic control).
//! - [`inject`]: sidecar injection into workload manifests (`sluice inject`, as
//!   `istioctl kube-inject`), and the same as a mutating admission webhook ([`webhook`]).
//! - [`status`]: analysis results written to the Istio resources' status, as istiod does.
//! - [`leader`]: leader election over a Lease, so one replica of several writes status.
//! - [`root_cert`]: the mesh root published in every namespace for injected sidecars.
//! - [`token_review`]: service-account tokens checked by the API server, for the certificate
//!   service.
//! - [`webhook`]: the admission webhooks `sluice control` serves: injection, and validation
//!   that refuses what `sluice validate` refuses.

pub use kube;

pub mod inject;
pub mod leader;
pub mod root_cert;
pub mod source;
pub mod status;
pub mod token_review;
pub mod webhook;
