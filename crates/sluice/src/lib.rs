//! sluice: Istio's traffic control as one small Rust binary. This library holds the binary's
//! subcommands so they can be tested without spawning it.

pub mod ca;
pub mod demo;
pub mod init;
pub mod validate_cmd;
