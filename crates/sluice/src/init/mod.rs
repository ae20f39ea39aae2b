//! `sluice init`: the equivalent of Istio's `istio-iptables` (the `istio-init` container).
//!
//! It installs the iptables rules that send a workload's TCP traffic through the sidecar:
//! outbound to the outbound capture port (15001), inbound to the inbound capture port (15006),
//! while the proxy's own traffic (uid/gid 1337) goes out untouched. It takes the flags the Istio
//! injector passes, in the same spelling, and produces the same chains and rules in the same order,
//! so `iptables-save` of a sluice pod reads like an Istio pod's.
//!
//! - `config`: the flags, validated into a `CaptureConfig`.
//! - `rules`: the rules, generated in istio-iptables order; printed as iptables-restore input.
//! - `system`: applying them (`iptables-restore --noflush`, `ip rule`/`ip route` for TPROXY) and
//!   removing them (`--cleanup`, and before every apply so that re-running is idempotent).
//! - `ipv6`: whether IPv6 is captured too. Unlike istio-iptables, a namespace with a global IPv6
//!   address gets ip6tables rules even without `--dual-stack`, so IPv6 never bypasses the sidecar.

mod config;
mod ipv6;
mod rules;
mod system;

use clap::builder::BoolishValueParser;
use clap::Parser;

pub use config::InitError;
use config::{CaptureConfig, DEFAULT_PROXY_UID};
use ipv6::{Ipv6Decision, NamespaceIpv6};
use rules::{IpFamily, RuleSet};

/// Arguments of `sluice init` (istio-iptables flags).
///
/// Every flag can also come from the environment variable istio-iptables reads (its long name in
/// upper case, `-` → `_`, e.g. `ISTIO_SERVICE_CIDR`; booleans accept `true`/`1`/`yes`…). Values
/// are kept as written (`-x ""` is valid) and validated by [`run`].
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Port to which all outbound TCP traffic is redirected (ISTIO_REDIRECT).
    #[arg(
        short = 'p',
        long = "envoy-port",
        env = "ENVOY_PORT",
        default_value = "15001",
        value_name = "PORT"
    )]
    pub envoy_port: String,

    /// Port to which all inbound TCP traffic to the pod/VM is redirected.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        default_value = "15006",
        value_name = "PORT"
    )]
    pub inbound_capture_port: String,

    /// Istio tunnel (HBONE) port; inbound traffic to it is never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        default_value = "15008",
        value_name = "PORT"
    )]
    pub inbound_tunnel_port: String,

    /// UIDs (comma-separated) whose traffic is not redirected, typically the proxy's
    /// [default: uid of $ENVOY_USER, else 1337].
    #[arg(
        short = 'u',
        long = "proxy-uid",
        env = "PROXY_UID",
        default_value = "",
        hide_default_value = true,
        value_name = "UIDS"
    )]
    pub proxy_uid: String,

    /// GIDs (comma-separated) whose traffic is not redirected [default: same as -u].
    #[arg(
        short = 'g',
        long = "proxy-gid",
        env = "PROXY_GID",
        default_value = "",
        hide_default_value = true,
        value_name = "GIDS"
    )]
    pub proxy_gid: String,

    /// How inbound connections are captured: REDIRECT or TPROXY [default: REDIRECT].
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        default_value = "",
        hide_default_value = true,
        value_name = "MODE"
    )]
    pub interception_mode: String,

    /// Inbound ports to redirect (comma-separated); "*" = all; empty = no inbound capture.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub inbound_ports: String,

    /// Inbound ports excluded from redirection; only applies with -b "*".
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub inbound_ports_exclude: String,

    /// Outbound CIDRs to redirect (comma-separated); "*" = all; empty disables outbound capture.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        default_value = "",
        hide_default_value = true,
        value_name = "CIDRS"
    )]
    pub outbound_cidrs: String,

    /// Outbound CIDRs excluded from redirection ("*" is rejected).
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = "",
        hide_default_value = true,
        value_name = "CIDRS"
    )]
    pub outbound_cidrs_exclude: String,

    /// Outbound ports always redirected, whatever the destination address.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub outbound_ports: String,

    /// Outbound ports excluded from redirection (TCP and UDP).
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub outbound_ports_exclude: String,

    /// Network interfaces whose traffic is not captured in either direction.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = "",
        hide_default_value = true,
        value_name = "NICS"
    )]
    pub exclude_interfaces: String,

    /// Virtual interfaces whose inbound traffic (from a VM) is treated as outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        default_value = "",
        hide_default_value = true,
        value_name = "NICS"
    )]
    pub kube_virt_interfaces: String,

    /// TPROXY packet mark.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        default_value = "1337",
        value_name = "MARK"
    )]
    pub tproxy_mark: String,

    /// TPROXY policy-routing table.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        default_value = "133",
        value_name = "TABLE"
    )]
    pub tproxy_route_table: String,

    /// Print the rules (iptables-save form) instead of applying them.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// Remove all ISTIO_* chains, the jumps to them and the TPROXY routing, then exit.
    /// Pass the same -c/-k/-u/-t/-r as when applying to also remove those rules.
    #[arg(long = "cleanup", visible_alias = "cleanup-only")]
    pub cleanup: bool,

    /// Drop packets in conntrack state INVALID (out of window) instead of letting them reset
    /// connections.
    #[arg(long = "drop-invalid", env = "INVALID_DROP", value_parser = BoolishValueParser::new())]
    pub drop_invalid: bool,

    /// Generate and apply IPv6 rules too (implied when -i/-x contain an IPv6 range, and when the
    /// network namespace has a global IPv6 address: IPv6 is never left uncaptured).
    #[arg(long = "dual-stack", env = "ISTIO_DUAL_STACK", value_parser = BoolishValueParser::new())]
    pub dual_stack: bool,

    /// What "localhost" is in IPv4 rules (env-only knob in istio-iptables).
    #[arg(
        long = "ipv4-loopback-cidr",
        env = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        default_value = "127.0.0.1/32",
        hide = true,
        value_name = "CIDR"
    )]
    pub ipv4_loopback_cidr: String,

    /// Owner groups whose outbound traffic is captured; "*" = all (env-only in istio-iptables).
    #[arg(
        long = "outbound-owner-groups",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS",
        default_value = "*",
        hide = true,
        value_name = "GROUPS"
    )]
    pub owner_groups_include: String,

    /// Owner groups excluded when all are captured (env-only in istio-iptables).
    #[arg(
        long = "outbound-owner-groups-exclude",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        default_value = "",
        hide_default_value = true,
        hide = true,
        value_name = "GROUPS"
    )]
    pub owner_groups_exclude: String,

    /// Accepted and ignored: the Istio injector passes it (`--log_output_level=default:info`).
    #[arg(long = "log_output_level", value_name = "LEVELS", hide = true)]
    pub log_output_level: Option<String>,

    /// Accepted and ignored: Istio's logging option.
    #[arg(long = "log_as_json", hide = true)]
    pub log_as_json: bool,
}

/// Parses `InitArgs` alone, for tests and embedding (the binary gets them through its own CLI).
#[derive(Parser, Debug)]
#[command(
    name = "sluice-init",
    about = "Set up iptables rules for the sluice sidecar (istio-iptables flags)",
    no_binary_name = true
)]
struct StandaloneInit {
    #[command(flatten)]
    args: InitArgs,
}

impl InitArgs {
    /// Parses istio-iptables flags (without a program name), e.g.
    /// `["-p", "15001", "-i", "*", "-x", ""]`.
    pub fn try_parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        StandaloneInit::try_parse_from(argv).map(|cli| cli.args)
    }
}

/// What an empty `-u` means: the uid of `$ENVOY_USER` (default `istio-proxy`) if that user exists,
/// else 1337, as istio-iptables does.
fn default_proxy_uid() -> String {
    let user = std::env::var("ENVOY_USER").unwrap_or_else(|_| "istio-proxy".to_string());
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| config::uid_of_user(&passwd, &user))
        .unwrap_or_else(|| DEFAULT_PROXY_UID.to_string())
}

/// The rule sets (IPv4, then IPv6 when captured) for validated flags.
fn rule_sets(cfg: &CaptureConfig) -> Vec<RuleSet> {
    let mut sets = vec![rules::build(cfg, IpFamily::V4)];
    if cfg.ipv6.captures() {
        sets.push(rules::build(cfg, IpFamily::V6));
    }
    sets
}

/// Validates the flags and settles the IPv6 question by looking at the network namespace (read
/// by `namespace`, only when the flags leave the question open).
fn config_for_namespace(
    args: &InitArgs,
    default_proxy_uid: &str,
    namespace: impl FnOnce() -> Result<NamespaceIpv6, InitError>,
) -> Result<CaptureConfig, InitError> {
    let mut cfg = CaptureConfig::from_args(args, default_proxy_uid)?;
    if cfg.ipv6 == Ipv6Decision::NotRequested {
        cfg.ipv6 = cfg.ipv6.with_namespace(&namespace()?);
    }
    Ok(cfg)
}

/// What `--dry-run` prints (and `sluice init` logs after applying): the IPv6 decision as a
/// comment, then the rules.
fn report(cfg: &CaptureConfig, sets: &[RuleSet]) -> String {
    format!("{}{}", cfg.ipv6.comment(), render(sets))
}

/// The rules as iptables-restore input, IPv6 (if any) after a comment line.
fn render(sets: &[RuleSet]) -> String {
    let mut out = String::new();
    for set in sets {
        if set.family == IpFamily::V6 {
            out.push_str("# IPv6 (ip6tables-restore)\n");
        }
        out.push_str(&set.to_restore());
    }
    out
}

/// The rules `args` produce in the calling thread's network namespace, as `--dry-run` prints
/// them (IPv6 decision first). Validates the flags and reads the namespace's addresses; changes
/// nothing.
pub fn generate(args: &InitArgs) -> Result<String, InitError> {
    let cfg = config_for_namespace(args, &default_proxy_uid(), ipv6::detect)?;
    Ok(report(&cfg, &rule_sets(&cfg)))
}

/// Runs `sluice init`: validate the flags, then print (`--dry-run`), remove (`--cleanup`) or
/// apply the rules. Applying replaces any existing ISTIO_* state, so it can be re-run.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.cleanup {
        // Cleanup removes IPv6 state whenever ip6tables is there: no need to look at addresses.
        let cfg = CaptureConfig::from_args(args, &default_proxy_uid())?;
        if args.dry_run {
            eprintln!("sluice init: dry run: would remove all ISTIO_* chains (IPv4 and IPv6), the jumps to them and the TPROXY routing");
        } else {
            system::cleanup(&cfg)?;
            eprintln!("sluice init: removed ISTIO_* chains and rules");
        }
        return Ok(());
    }
    let cfg = config_for_namespace(args, &default_proxy_uid(), ipv6::detect)?;
    let sets = rule_sets(&cfg);
    let text = report(&cfg, &sets);
    if !args.dry_run {
        system::apply(&cfg, &sets)?;
    }
    // Like istio-init's log of the final state: what is (or, in a dry run, would be) in place.
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod golden_tests;
