//! Validated capture configuration: what the istio-iptables flags mean, checked once.
//!
//! [`InitArgs`](super::InitArgs) keeps the flags as the strings the injector passes (so `-x ""` and
//! `-i '*'` are accepted as written); [`CaptureConfig::from_args`] turns them into typed values and
//! rejects anything iptables would choke on, with a message naming the flag.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use super::ipv6::Ipv6Decision;
use super::InitArgs;

/// Defaults of istio-iptables (`tools/common/config/config.go` `DefaultConfig()`).
pub(crate) const DEFAULT_PROXY_PORT: u16 = 15001;
pub(crate) const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
pub(crate) const DEFAULT_INBOUND_TUNNEL_PORT: u16 = 15008;
pub(crate) const DEFAULT_PROXY_UID: &str = "1337";
pub(crate) const DEFAULT_TPROXY_MARK: u32 = 1337;
pub(crate) const DEFAULT_TPROXY_ROUTE_TABLE: u32 = 133;
pub(crate) const DEFAULT_IPV4_LOOPBACK_CIDR: &str = "127.0.0.1/32";

/// istio-iptables folds all included owner groups into one rule of `-m owner ! --gid-owner G`
/// matches; kernels cap the number of matches per rule, so Istio caps the list at 64
/// (`config/validation.go` `maxOwnerGroupsInclude`).
const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

/// Linux interface names are at most 15 bytes (`IFNAMSIZ` - 1).
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// Errors of `sluice init`: bad flag values, missing programs, failed commands.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag (or its environment variable) has a value that cannot be turned into rules.
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidFlag {
        /// The flag, as the user writes it (`-x/--istio-service-exclude-cidr`).
        flag: &'static str,
        /// The offending value (the whole flag value or the one bad list item).
        value: String,
        /// What is wrong and, where possible, what to write instead.
        reason: String,
    },
    /// A program needed to apply the rules is not installed.
    #[error("{program} not found: install the {package} package")]
    MissingProgram {
        /// The program looked up in `PATH`, `/usr/sbin` and `/sbin`.
        program: &'static str,
        /// The Debian/Ubuntu package that ships it.
        package: &'static str,
    },
    /// An external command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// An external command ran and failed.
    #[error("`{command}` failed ({status}): {detail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stderr, plus the offending input line when iptables-restore names one.
        detail: String,
    },
    /// The namespace's IPv6 addresses could not be read, so nobody can tell whether IPv6 would
    /// bypass the sidecar.
    #[error("cannot tell whether this network namespace has IPv6 addresses: {}: {detail}", path.display())]
    Ipv6Detection {
        /// The file that was read (`/proc/thread-self/net/if_inet6`).
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// IPv6 must be captured but its rules could not be set up. Failing here keeps the pod from
    /// starting with IPv6 egress that bypasses the sidecar.
    #[error(
        "IPv6 must be captured ({reason}) but cannot be: {source}; refusing to leave IPv6 egress \
         uncaptured (install ip6tables and the kernel's ip6table_nat support, or disable IPv6 in \
         this namespace: sysctl -w net.ipv6.conf.all.disable_ipv6=1)"
    )]
    Ipv6Unprotected {
        /// Why IPv6 is captured (`global address fd00::2 on eth0`, `--dual-stack`).
        reason: String,
        /// What failed.
        source: Box<InitError>,
    },
}

/// How inbound connections reach the proxy (`-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InterceptionMode {
    /// NAT REDIRECT to the inbound capture port; the app sees the proxy as the peer.
    Redirect,
    /// Mangle-table TPROXY plus policy routing; the original source address is preserved.
    Tproxy,
}

/// Which inbound TCP ports are captured (`-b`, `-d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InboundPorts {
    /// `-b ""`: no inbound capture, not even a PREROUTING jump.
    None,
    /// `-b '*'`: every port except the `-d` ones.
    AllExcept(Vec<u16>),
    /// `-b p1,p2`: only these ports (`-d` does not apply).
    Only(Vec<u16>),
}

/// Which outbound destinations are captured (`-i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OutboundRanges {
    /// `-i ""`: outbound capture by destination address is off (`-q` ports still apply).
    None,
    /// `-i '*'`: everything not excluded earlier in ISTIO_OUTPUT.
    All,
    /// `-i cidr,cidr`: only these destinations.
    Cidrs(Vec<IpNet>),
}

impl OutboundRanges {
    /// Whether a listed range starts with a loopback address. istio-iptables then drops the
    /// "app → app over lo is not captured" rule, because the user asked for loopback capture.
    pub(crate) fn has_loopback(&self) -> bool {
        match self {
            OutboundRanges::Cidrs(cidrs) => cidrs.iter().any(|c| c.addr().is_loopback()),
            OutboundRanges::None | OutboundRanges::All => false,
        }
    }
}

/// Which owner groups' outbound traffic is captured (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnerGroups {
    /// Include list `*`: all groups except these.
    AllExcept(Vec<String>),
    /// Include list: only these groups (an empty list captures no group).
    Only(Vec<String>),
}

/// Everything the rule generator needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaptureConfig {
    /// Outbound capture port (`-p`, Envoy's `virtualOutbound` listener).
    pub proxy_port: u16,
    /// Inbound capture port (`-z`, `virtualInbound`).
    pub inbound_capture_port: u16,
    /// HBONE tunnel port (`-e`); inbound traffic to it is never captured.
    pub inbound_tunnel_port: u16,
    /// UIDs whose traffic is the proxy's own and must not be captured again (`-u`).
    pub proxy_uids: Vec<String>,
    /// GIDs with the same role (`-g`, defaults to `-u`).
    pub proxy_gids: Vec<String>,
    /// `-m`.
    pub mode: InterceptionMode,
    /// `-b` and `-d`.
    pub inbound_ports: InboundPorts,
    /// `-i`.
    pub outbound_include: OutboundRanges,
    /// `-x`.
    pub outbound_exclude: Vec<IpNet>,
    /// `-q`: always captured, whatever the destination.
    pub outbound_ports_include: Vec<u16>,
    /// `-o`: never captured (tcp and udp).
    pub outbound_ports_exclude: Vec<u16>,
    /// `-c`: NICs whose traffic is never captured.
    pub exclude_interfaces: Vec<String>,
    /// `-k`: NICs whose inbound traffic (from a VM) is treated as outbound.
    pub reroute_interfaces: Vec<String>,
    /// `-t`.
    pub tproxy_mark: u32,
    /// `-r`.
    pub tproxy_route_table: u32,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// Whether IPv6 rules are generated and applied, and why: `--dual-stack` or an IPv6 range in
    /// `-i`/`-x` decide it here; otherwise [`Ipv6Decision::with_namespace`] does before applying.
    pub ipv6: Ipv6Decision,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: what "localhost" means for IPv4 rules.
    pub ipv4_loopback: Ipv4Net,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    pub owner_groups: OwnerGroups,
}

impl CaptureConfig {
    /// Validates the flags. `default_proxy_uid` is what an empty `-u` means (the uid of
    /// `$ENVOY_USER`, else 1337); it is a parameter so tests do not depend on `/etc/passwd`.
    pub(crate) fn from_args(args: &InitArgs, default_proxy_uid: &str) -> Result<Self, InitError> {
        let proxy_port =
            parse_single_port("-p/--envoy-port", &args.envoy_port, DEFAULT_PROXY_PORT)?;
        let inbound_capture_port = parse_single_port(
            "-z/--inbound-capture-port",
            &args.inbound_capture_port,
            DEFAULT_INBOUND_CAPTURE_PORT,
        )?;
        let inbound_tunnel_port = parse_single_port(
            "-e/--inbound-tunnel-port",
            &args.inbound_tunnel_port,
            DEFAULT_INBOUND_TUNNEL_PORT,
        )?;

        let mut proxy_uids = parse_owner_list("-u/--proxy-uid", &args.proxy_uid)?;
        if proxy_uids.is_empty() {
            proxy_uids = vec![default_proxy_uid.to_string()];
        }
        let mut proxy_gids = parse_owner_list("-g/--proxy-gid", &args.proxy_gid)?;
        if proxy_gids.is_empty() {
            proxy_gids = proxy_uids.clone();
        }

        let mode = parse_mode(&args.interception_mode)?;

        let inbound_ports = {
            let exclude = parse_port_list(
                "-d/--istio-local-exclude-ports",
                &args.inbound_ports_exclude,
            )?;
            match args.inbound_ports.trim() {
                "" => InboundPorts::None,
                "*" => InboundPorts::AllExcept(exclude),
                list => InboundPorts::Only(parse_port_list("-b/--istio-inbound-ports", list)?),
            }
        };

        let outbound_include = match args.outbound_cidrs.trim() {
            "" => OutboundRanges::None,
            "*" => OutboundRanges::All,
            list => OutboundRanges::Cidrs(parse_cidr_list("-i/--istio-service-cidr", list)?),
        };
        let outbound_exclude = if args.outbound_cidrs_exclude.trim() == "*" {
            // istio-iptables: "invalid value for OUTBOUND_IP_RANGES_EXCLUDE". Excluding everything
            // is what `-i ""` already means; a wildcard here is almost certainly a mistake.
            return Err(InitError::InvalidFlag {
                flag: "-x/--istio-service-exclude-cidr",
                value: "*".into(),
                reason:
                    "the wildcard is not allowed here; to capture no outbound traffic use -i \"\""
                        .into(),
            });
        } else {
            parse_cidr_list(
                "-x/--istio-service-exclude-cidr",
                &args.outbound_cidrs_exclude,
            )?
        };

        let outbound_ports_include =
            parse_port_list("-q/--istio-outbound-ports", &args.outbound_ports)?;
        let outbound_ports_exclude = parse_port_list(
            "-o/--istio-local-outbound-ports-exclude",
            &args.outbound_ports_exclude,
        )?;

        let exclude_interfaces =
            parse_interfaces("-c/--istio-exclude-interfaces", &args.exclude_interfaces)?;
        let reroute_interfaces =
            parse_interfaces("-k/--kube-virt-interfaces", &args.kube_virt_interfaces)?;

        let tproxy_mark = parse_u32(
            "-t/--istio-inbound-tproxy-mark",
            &args.tproxy_mark,
            DEFAULT_TPROXY_MARK,
        )?;
        let tproxy_route_table = parse_u32(
            "-r/--istio-inbound-tproxy-route-table",
            &args.tproxy_route_table,
            DEFAULT_TPROXY_ROUTE_TABLE,
        )?;
        if tproxy_route_table == 0 || (253..=255).contains(&tproxy_route_table) {
            // 0 is "unspec" and 253-255 are the kernel's default/main/local tables: routing all
            // marked traffic to lo in one of those would break the pod's networking.
            return Err(InitError::InvalidFlag {
                flag: "-r/--istio-inbound-tproxy-route-table",
                value: args.tproxy_route_table.clone(),
                reason: "tables 0 and 253-255 are reserved by the kernel; use a private table such as 133".into(),
            });
        }

        let ipv4_loopback = parse_ipv4_loopback(&args.ipv4_loopback_cidr)?;
        let owner_groups =
            parse_owner_groups(&args.owner_groups_include, &args.owner_groups_exclude)?;

        let include_cidrs: &[IpNet] = match &outbound_include {
            OutboundRanges::Cidrs(cidrs) => cidrs,
            OutboundRanges::None | OutboundRanges::All => &[],
        };
        let first_ipv6 =
            |cidrs: &[IpNet]| cidrs.iter().copied().find(|c| matches!(c, IpNet::V6(_)));
        let ipv6_range = first_ipv6(include_cidrs)
            .map(|range| ("-i/--istio-service-cidr", range))
            .or_else(|| {
                first_ipv6(&outbound_exclude)
                    .map(|range| ("-x/--istio-service-exclude-cidr", range))
            });

        Ok(CaptureConfig {
            proxy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            mode,
            inbound_ports,
            outbound_include,
            outbound_exclude,
            outbound_ports_include,
            outbound_ports_exclude,
            exclude_interfaces,
            reroute_interfaces,
            tproxy_mark,
            tproxy_route_table,
            drop_invalid: args.drop_invalid,
            ipv6: Ipv6Decision::from_flags(args.dual_stack, ipv6_range),
            ipv4_loopback,
            owner_groups,
        })
    }
}

/// Splits a comma list like istio-iptables does (empty items are skipped), also trimming spaces
/// so `15090, 15021` works.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn invalid(flag: &'static str, value: &str, reason: impl fmt::Display) -> InitError {
    InitError::InvalidFlag {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_port(flag: &'static str, item: &str) -> Result<u16, InitError> {
    match item.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(invalid(flag, item, "not a port number (1-65535)")),
    }
}

/// One port; an empty value means the istio-iptables default.
fn parse_single_port(flag: &'static str, value: &str, default: u16) -> Result<u16, InitError> {
    match value.trim() {
        "" => Ok(default),
        item => parse_port(flag, item),
    }
}

fn parse_port_list(flag: &'static str, value: &str) -> Result<Vec<u16>, InitError> {
    split_list(value)
        .map(|item| {
            if item == "*" {
                Err(invalid(
                    flag,
                    value,
                    "the wildcard \"*\" must be the whole value, not a list item",
                ))
            } else {
                parse_port(flag, item)
            }
        })
        .collect()
}

fn parse_u32(flag: &'static str, value: &str, default: u32) -> Result<u32, InitError> {
    match value.trim() {
        "" => Ok(default),
        item => item
            .parse::<u32>()
            .map_err(|_| invalid(flag, item, "not a non-negative 32-bit integer")),
    }
}

fn parse_mode(value: &str) -> Result<InterceptionMode, InitError> {
    const FLAG: &str = "-m/--istio-inbound-interception-mode";
    match value.trim() {
        // istio-iptables treats an empty mode as REDIRECT.
        "" | "REDIRECT" => Ok(InterceptionMode::Redirect),
        "TPROXY" => Ok(InterceptionMode::Tproxy),
        "NONE" => Err(invalid(
            FLAG,
            value,
            "NONE means no traffic capture: do not run `sluice init` for this workload",
        )),
        other => Err(invalid(FLAG, other, "expected REDIRECT or TPROXY")),
    }
}

fn parse_cidr_list(flag: &'static str, value: &str) -> Result<Vec<IpNet>, InitError> {
    split_list(value)
        .map(|item| {
            if item == "*" {
                return Err(invalid(
                    flag,
                    value,
                    "the wildcard \"*\" must be the whole value, not a list item",
                ));
            }
            item.parse::<IpNet>().map_err(|_| {
                let hint = if item.parse::<std::net::IpAddr>().is_ok() {
                    format!(
                        "a CIDR needs a prefix length, e.g. {item}/{}",
                        if item.contains(':') { 128 } else { 32 }
                    )
                } else {
                    "not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)".to_string()
                };
                invalid(flag, item, hint)
            })
        })
        .collect()
}

/// A uid/gid for `-m owner --uid-owner`: a number or a user/group name.
fn parse_owner(flag: &'static str, item: &str) -> Result<String, InitError> {
    let valid_name = item
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && item
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if valid_name {
        Ok(item.to_string())
    } else {
        Err(invalid(flag, item, "not a numeric id or a user/group name"))
    }
}

fn parse_owner_list(flag: &'static str, value: &str) -> Result<Vec<String>, InitError> {
    split_list(value)
        .map(|item| parse_owner(flag, item))
        .collect()
}

fn parse_interfaces(flag: &'static str, value: &str) -> Result<Vec<String>, InitError> {
    split_list(value)
        .map(|item| {
            if item.len() > MAX_INTERFACE_NAME_LEN {
                Err(invalid(
                    flag,
                    item,
                    "interface names are at most 15 characters",
                ))
            } else if item
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | ':' | '!' | '"' | '\''))
                || item.starts_with('-')
            {
                Err(invalid(flag, item, "not a valid interface name"))
            } else {
                Ok(item.to_string())
            }
        })
        .collect()
}

fn parse_ipv4_loopback(value: &str) -> Result<Ipv4Net, InitError> {
    const FLAG: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    let value = match value.trim() {
        "" => DEFAULT_IPV4_LOOPBACK_CIDR,
        v => v,
    };
    let cidr: Ipv4Net = value
        .parse()
        .map_err(|_| invalid(FLAG, value, "not an IPv4 CIDR (expected e.g. 127.0.0.1/32)"))?;
    let loopback_block =
        Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("/8 is a valid prefix length");
    if cidr.prefix_len() < 8 || !loopback_block.contains(&cidr.addr()) {
        return Err(invalid(FLAG, value, "must be a range inside 127.0.0.0/8"));
    }
    Ok(cidr)
}

fn parse_owner_groups(include: &str, exclude: &str) -> Result<OwnerGroups, InitError> {
    const INCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
    const EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
    if include.trim() == "*" {
        return Ok(OwnerGroups::AllExcept(parse_owner_list(EXCLUDE, exclude)?));
    }
    let groups = parse_owner_list(INCLUDE, include)?;
    if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
        return Err(invalid(
            INCLUDE,
            include,
            format!(
                "at most {MAX_OWNER_GROUPS_INCLUDE} groups can be listed (got {}); use \"*\" and {EXCLUDE} instead",
                groups.len()
            ),
        ));
    }
    Ok(OwnerGroups::Only(groups))
}

/// The uid of `user` in an `/etc/passwd`-format text, as istio-iptables looks up `$ENVOY_USER`.
pub(crate) fn uid_of_user(passwd: &str, user: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?;
        (name == user && !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
            .then(|| uid.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Result<CaptureConfig, InitError> {
        let args = InitArgs::try_parse_from(argv.iter().copied()).expect("flags parse");
        CaptureConfig::from_args(&args, DEFAULT_PROXY_UID)
    }

    fn error(argv: &[&str]) -> String {
        match config(argv) {
            Ok(cfg) => panic!("expected an error for {argv:?}, got {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_match_istio_iptables() {
        let cfg = config(&[]).expect("valid");
        assert_eq!(cfg.proxy_port, 15001);
        assert_eq!(cfg.inbound_capture_port, 15006);
        assert_eq!(cfg.inbound_tunnel_port, 15008);
        assert_eq!(cfg.proxy_uids, ["1337"]);
        assert_eq!(cfg.proxy_gids, ["1337"]);
        assert_eq!(cfg.mode, InterceptionMode::Redirect);
        assert_eq!(cfg.inbound_ports, InboundPorts::None);
        assert_eq!(cfg.outbound_include, OutboundRanges::None);
        assert_eq!(cfg.tproxy_mark, 1337);
        assert_eq!(cfg.tproxy_route_table, 133);
        assert_eq!(cfg.ipv6, Ipv6Decision::NotRequested);
        assert_eq!(cfg.owner_groups, OwnerGroups::AllExcept(vec![]));
    }

    #[test]
    fn gid_defaults_to_uid_list() {
        let cfg = config(&["-u", "1337,1338"]).expect("valid");
        assert_eq!(cfg.proxy_gids, ["1337", "1338"]);
        let cfg = config(&["-u", "1337", "-g", "2000"]).expect("valid");
        assert_eq!(cfg.proxy_gids, ["2000"]);
    }

    #[test]
    fn empty_values_are_accepted() {
        let cfg = config(&[
            "-x", "", "-i", "", "-b", "", "-d", "", "-o", "", "-q", "", "-c", "", "-k", "",
        ])
        .expect("empty values are valid");
        assert!(cfg.outbound_exclude.is_empty());
        assert_eq!(cfg.inbound_ports, InboundPorts::None);
    }

    #[test]
    fn lists_tolerate_spaces_and_empty_items() {
        let cfg = config(&["-b", "*", "-d", "15090, 15021,,15020"]).expect("valid");
        assert_eq!(
            cfg.inbound_ports,
            InboundPorts::AllExcept(vec![15090, 15021, 15020])
        );
    }

    #[test]
    fn wildcard_exclude_cidr_is_rejected() {
        let msg = error(&["-x", "*"]);
        assert!(msg.contains("-x/--istio-service-exclude-cidr"), "{msg}");
        assert!(msg.contains("wildcard"), "{msg}");
    }

    #[test]
    fn bad_cidrs_are_rejected_with_a_hint() {
        let msg = error(&["-i", "10.0.0.0/8,10.1.2.3"]);
        assert!(msg.contains("\"10.1.2.3\""), "{msg}");
        assert!(msg.contains("10.1.2.3/32"), "{msg}");
        let msg = error(&["-x", "not-a-cidr"]);
        assert!(msg.contains("not a CIDR"), "{msg}");
        let msg = error(&["-i", "10.0.0.0/33"]);
        assert!(msg.contains("-i/--istio-service-cidr"), "{msg}");
    }

    #[test]
    fn bad_ports_are_rejected() {
        assert!(error(&["-p", "abc"]).contains("-p/--envoy-port"));
        assert!(error(&["-z", "70000"]).contains("not a port number"));
        assert!(error(&["-d", "15090,0"]).contains("\"0\""));
        assert!(error(&["-b", "80,*"]).contains("wildcard"));
        assert!(error(&["-o", "22;rm"]).contains("-o/--istio-local-outbound-ports-exclude"));
    }

    #[test]
    fn mode_is_checked() {
        assert_eq!(
            config(&["-m", "TPROXY"]).expect("valid").mode,
            InterceptionMode::Tproxy
        );
        assert!(error(&["-m", "tproxy-ish"]).contains("expected REDIRECT or TPROXY"));
        assert!(error(&["-m", "NONE"]).contains("do not run"));
    }

    #[test]
    fn interfaces_and_owners_are_checked() {
        assert!(error(&["-c", "eth0,a-very-long-interface-name"]).contains("at most 15"));
        assert!(error(&["-k", "eth 1"]).contains("not a valid interface name"));
        assert!(error(&["-u", "1337;x"]).contains("-u/--proxy-uid"));
        assert_eq!(
            config(&["-u", "istio-proxy"])
                .expect("names are valid")
                .proxy_uids,
            ["istio-proxy"]
        );
    }

    #[test]
    fn tproxy_table_must_be_private() {
        assert!(error(&["-r", "254"]).contains("reserved"));
        assert!(error(&["-t=-1"]).contains("-t/--istio-inbound-tproxy-mark"));
        assert!(error(&["-t", "0x539"]).contains("not a non-negative 32-bit integer"));
    }

    #[test]
    fn ipv6_follows_dual_stack_or_ipv6_ranges() {
        assert_eq!(
            config(&["--dual-stack"]).expect("valid").ipv6,
            Ipv6Decision::DualStackFlag
        );
        assert_eq!(
            config(&["-x", "10.0.0.0/8,fd00::/8"]).expect("valid").ipv6,
            Ipv6Decision::Ipv6Range {
                flag: "-x/--istio-service-exclude-cidr",
                range: "fd00::/8".parse().expect("cidr"),
            }
        );
        let cfg = config(&["-i", "2001:db8::/32"]).expect("valid");
        assert!(cfg.ipv6.captures());
        assert_eq!(
            cfg.ipv6.to_string(),
            "-i/--istio-service-cidr lists the IPv6 range 2001:db8::/32"
        );
        // The flags alone leave it open: the namespace decides (see `ipv6`).
        assert_eq!(
            config(&["-i", "*", "-x", "10.0.0.0/8"])
                .expect("valid")
                .ipv6,
            Ipv6Decision::NotRequested
        );
    }

    #[test]
    fn loopback_detection_in_include_ranges() {
        assert!(config(&["-i", "127.1.2.3/32"])
            .expect("valid")
            .outbound_include
            .has_loopback());
        assert!(!config(&["-i", "*"])
            .expect("valid")
            .outbound_include
            .has_loopback());
    }

    #[test]
    fn envoy_user_lookup_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:1337:1337::/home:/bin/false\n";
        assert_eq!(uid_of_user(passwd, "istio-proxy").as_deref(), Some("1337"));
        assert_eq!(uid_of_user(passwd, "nobody"), None);
    }
}
