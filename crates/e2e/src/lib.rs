//! End-to-end test harness for sluice: real programs in network namespaces.
//!
//! Every test builds its own little world with [`TestEnv::new`]:
//!
//! ```text
//!   netns "slNNN-pod-<test>"                      netns "slNNN-ext-<test>"
//!   ┌────────────────────────────┐   veth pair    ┌──────────────────────────────────────┐
//!   │ curl (the app, root)       │ 10.234.N.2/24  │ 10.234.N.1   dnsmasq :53             │
//!   │ sluice init  (iptables)    ├────────────────┤ 10.234.N.10  httpbin.org  :80 (:443) │
//!   │ sluice sidecar (uid 1337)  │                │ 10.234.N.20  www.google.com :443     │
//!   └────────────────────────────┘                │ 10.234.N.21  edition.cnn.com :443    │
//!                                                 └──────────────────────────────────────┘
//! ```
//!
//! Neither namespace has a default route, so nothing can leave the machine: tests only ever address
//! loopback or the test's own namespaces. Names resolve through the test's own dnsmasq, which programs
//! in the pod namespace (curl, the sidecar) use via `/etc/netns/<pod>/resolv.conf`. The HTTPS hosts
//! present a certificate from a per-test CA ([`Pki`]); curl trusts it through `--cacert`.
//!
//! The "services inside the mesh" scenarios (seed 004) use [`MeshEnv`] instead: several pods on
//! one bridge, Kubernetes Services with cluster IPs, and the tutorial's chain of apps
//! (`apps/chain.py`); see [`mesh`]. The ingress-gateway scenarios (seed 003) use [`GatewayEnv`]:
//! a client, `sluice gateway` and the backends in their own namespaces; see [`gateway`]. The
//! egress-gateway scenarios (seed 002) use [`EgressEnv`]: app pods with sidecars in several
//! Kubernetes namespaces, the egress gateway and the public hosts on one bridge; see [`egress`].
//!
//! Each test gets a slot N (0..=255) held by a lock file in `/run/sluice-e2e/`, so parallel tests,
//! in one process or many, never share names or subnets; a slot left behind by a killed run is
//! cleaned up by the next test that takes it.
//!
//! A missing prerequisite (not root, a missing program, no Python venv) makes the test fail with a
//! message that names it and the command that installs it. Nothing is skipped silently.
//!
//! Environment variables:
//! - `SLUICE_TEST_VENV`: the Python venv with httpbin and gunicorn (default `<repo>/.venv`).
//! - `SLUICE_BIN`: the sluice binary to test (default: `target/<profile>/sluice` next to the test binary).
//! - `SLUICE_E2E_LOG`: the sidecar's log level/filter (passed as `SLUICE_LOG` and `RUST_LOG`).
//! - `SLUICE_E2E_KEEP=1`: keep the per-test temporary directory (logs, config) after the test.

pub mod accesslog;
pub mod config;
pub mod curl;
pub mod dashboard;
pub mod egress;
pub mod egress_config;
pub mod env;
pub mod fake_apiserver;
pub mod gateway;
pub mod gateway_config;
pub mod guide;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod pki;
pub mod prereq;
pub mod process;
pub mod servers;
pub mod sidecar;
pub mod slot;
pub mod wait;
pub mod xds_peer;

pub use accesslog::AccessLogEntry;
pub use config::ConfigDir;
pub use curl::{Curl, CurlResult};
pub use egress::{AppPod, EgressEnv, MeshIdentity};
pub use env::{Hosts, TestEnv};
pub use gateway::{Gateway, GatewayEnv};
pub use mesh::{MeshEnv, Pod, PodSpec};
pub use netns::Netns;
pub use pki::Pki;
pub use sidecar::{Sidecar, SidecarOpts};
pub use wait::{eventually, settle};
