//! The data plane: listeners, protocol detection, HTTP and TCP/TLS proxying, upstream connections,
//! the config store, telemetry and the admin API.

pub mod admin;
pub mod balancer;
pub mod body;
pub mod context;
pub mod detect;
pub mod downstream;
pub mod gateway;
pub(crate) mod http_manager;
pub mod http_proxy;
pub mod identity;
pub mod inbound;
pub mod io;
pub(crate) mod jwt;
pub mod outbound;
pub mod resolve;
pub mod runtime;
pub mod sidecar;
pub mod sidecar_listeners;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod tls_server;
pub mod trace;
pub mod tunnel;
pub mod upstream;
pub mod upstream_h1;
pub mod upstream_h2;
pub mod upstream_security;
pub mod xds_source;
