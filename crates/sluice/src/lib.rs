//! sluice: Istio's traffic control as one small Rust binary. This library holds the binary's
//! subcommands so they can be tested without spawning it.

pub mod analyze_cmd;
pub mod ca;
pub mod cli_docs;
pub mod color;
pub mod dashboard;
pub mod demo;
pub mod explain_cmd;
pub mod http_get;
pub mod init;
pub mod inject_cmd;
pub mod proxy_config;
pub mod proxy_status;
pub mod suggest_cmd;
pub mod validate_cmd;
pub mod version_cmd;
