//! Whether `sluice init` captures IPv6, and why: IPv6 must never be a way around the sidecar.
//!
//! istio-iptables writes ip6tables rules only with `--dual-stack` (or when the pod's *first*
//! address is IPv6). A dual-stack pod injected without the flag gets IPv4 rules only, and its
//! IPv6 connections leave untouched: REGISTRY_ONLY, AuthorizationPolicy and telemetry all miss
//! them. The old shell istio-iptables "protected" such pods with
//! `ip6tables -A INPUT -j REJECT` (after accepting ESTABLISHED and `lo → ::1`), which filters
//! inbound traffic only and leaves IPv6 egress wide open.
//!
//! sluice fails closed instead: when the flags do not ask for IPv6, it looks at the network
//! namespace, and if any interface has an IPv6 address a packet can leave with (anything but
//! loopback and link-local), it captures IPv6 exactly like IPv4. Capturing, rather than
//! rejecting, keeps one meaning for the mesh policy: under ALLOW_ANY IPv6 destinations pass
//! through the proxy (`PassthroughCluster`), under REGISTRY_ONLY they get Istio's 502 /
//! BlackHoleCluster, and a ServiceEntry lets them through, exactly as for IPv4. A reject rule
//! would turn ALLOW_ANY into "deny IPv6" and make happy-eyeballs clients stall for no reason the
//! operator can see in the access log.

use std::fmt;
use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv6Net};

use super::config::InitError;

/// `/proc/net/if_inet6` scope values (`IPV6_ADDR_SCOPE_*` shifted as the kernel prints them) that
/// cannot carry traffic off this host: host (loopback) and link.
const SCOPE_HOST: u8 = 0x10;
const SCOPE_LINK: u8 = 0x20;

/// One IPv6 address of the network namespace, as `/proc/net/if_inet6` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InterfaceAddress {
    pub addr: Ipv6Addr,
    pub interface: String,
    /// The kernel's scope: 0x00 global (ULAs such as fd00::/8 included), 0x10 host, 0x20 link,
    /// 0x40 site.
    pub scope: u8,
}

impl InterfaceAddress {
    /// Whether a packet from this address can leave the host: everything but loopback and
    /// link-local. Site-local (deprecated, but routable inside a site) counts, as do tentative
    /// and deprecated addresses, which become or stay usable without anyone re-running init.
    pub fn is_routable(&self) -> bool {
        let link_local = Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
            .is_ok_and(|net| net.contains(&self.addr));
        !matches!(self.scope, SCOPE_HOST | SCOPE_LINK) && !self.addr.is_loopback() && !link_local
    }
}

/// What the network namespace offers in IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NamespaceIpv6 {
    /// The kernel was built or booted without IPv6 (`ipv6.disable=1`): there is no IPv6 to leak.
    Unsupported,
    /// The namespace's IPv6 addresses, in the kernel's order (maybe none).
    Addresses(Vec<InterfaceAddress>),
}

impl NamespaceIpv6 {
    /// Parses `/proc/net/if_inet6`: `ADDR(32 hex) IFINDEX PREFIXLEN SCOPE FLAGS IFNAME` per line.
    /// A line that does not parse is an error: guessing would risk missing an address.
    pub fn parse(if_inet6: &str, source: &Path) -> Result<NamespaceIpv6, InitError> {
        let mut addresses = Vec::new();
        for (index, line) in if_inet6.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || InitError::Ipv6Detection {
                path: source.to_path_buf(),
                detail: format!("line {}: unexpected format: {line:?}", index + 1),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [hex, _ifindex, _prefix_len, scope, _flags, interface] = fields.as_slice() else {
                return Err(bad());
            };
            let bits = u128::from_str_radix(hex, 16).map_err(|_| bad())?;
            if hex.len() != 32 {
                return Err(bad());
            }
            let scope = u8::from_str_radix(scope, 16).map_err(|_| bad())?;
            addresses.push(InterfaceAddress {
                addr: Ipv6Addr::from(bits),
                interface: interface.to_string(),
                scope,
            });
        }
        Ok(NamespaceIpv6::Addresses(addresses))
    }

    /// The first address a packet could leave the host with.
    pub fn first_routable(&self) -> Option<&InterfaceAddress> {
        match self {
            NamespaceIpv6::Unsupported => None,
            NamespaceIpv6::Addresses(addresses) => addresses.iter().find(|a| a.is_routable()),
        }
    }
}

/// Reads the IPv6 addresses of the calling thread's network namespace.
///
/// `/proc/thread-self/net` rather than `/proc/self/net`: the latter shows the namespace of the
/// process's main thread, which is not this one when a caller entered a namespace with `setns` on
/// a worker thread (as tests and embedders do).
pub(crate) fn detect() -> Result<NamespaceIpv6, InitError> {
    let net_dir = [
        PathBuf::from("/proc/thread-self/net"),
        PathBuf::from("/proc/self/net"),
    ]
    .into_iter()
    .find(|dir| dir.join("dev").exists())
    .ok_or_else(|| InitError::Ipv6Detection {
        path: PathBuf::from("/proc/thread-self/net/dev"),
        detail: "not found: /proc must be mounted to tell whether this namespace has IPv6".into(),
    })?;
    let path = net_dir.join("if_inet6");
    match std::fs::read_to_string(&path) {
        Ok(text) => NamespaceIpv6::parse(&text, &path),
        // /proc/net/dev exists but if_inet6 does not: the kernel has no IPv6 stack.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(NamespaceIpv6::Unsupported),
        Err(e) => Err(InitError::Ipv6Detection {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Whether IPv6 is captured, and the reason `--dry-run` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ipv6Decision {
    /// `--dual-stack` (or `ISTIO_DUAL_STACK`).
    DualStackFlag,
    /// `-i`/`-x` name an IPv6 range, which only makes sense with IPv6 rules (as in istio-iptables).
    Ipv6Range {
        /// The flag, as the user writes it.
        flag: &'static str,
        /// The first IPv6 range it lists.
        range: IpNet,
    },
    /// The flags do not ask for IPv6 and the namespace has not been looked at (yet).
    NotRequested,
    /// The namespace has an IPv6 address that can reach beyond the host: captured, fail closed.
    GlobalAddress { addr: Ipv6Addr, interface: String },
    /// Only loopback and link-local IPv6 addresses (or none): IPv6 cannot leave the pod.
    NoGlobalAddress,
    /// The kernel has no IPv6 at all.
    KernelWithoutIpv6,
}

impl Ipv6Decision {
    /// What the flags alone say.
    pub fn from_flags(dual_stack: bool, ipv6_range: Option<(&'static str, IpNet)>) -> Self {
        match (dual_stack, ipv6_range) {
            (true, _) => Ipv6Decision::DualStackFlag,
            (false, Some((flag, range))) => Ipv6Decision::Ipv6Range { flag, range },
            (false, None) => Ipv6Decision::NotRequested,
        }
    }

    /// Completes a decision the flags left open by looking at the namespace.
    pub fn with_namespace(self, namespace: &NamespaceIpv6) -> Self {
        if self != Ipv6Decision::NotRequested {
            return self;
        }
        match namespace {
            NamespaceIpv6::Unsupported => Ipv6Decision::KernelWithoutIpv6,
            NamespaceIpv6::Addresses(_) => match namespace.first_routable() {
                Some(a) => Ipv6Decision::GlobalAddress {
                    addr: a.addr,
                    interface: a.interface.clone(),
                },
                None => Ipv6Decision::NoGlobalAddress,
            },
        }
    }

    /// Whether ip6tables rules are generated and applied.
    pub fn captures(&self) -> bool {
        matches!(
            self,
            Ipv6Decision::DualStackFlag
                | Ipv6Decision::Ipv6Range { .. }
                | Ipv6Decision::GlobalAddress { .. }
        )
    }

    /// The comment line that heads `--dry-run` (and the applied-rules log), e.g.
    /// `# IPv6: global address fd00::2 on eth0 → capturing IPv6 (ip6tables)`.
    pub fn comment(&self) -> String {
        let outcome = if self.captures() {
            "capturing IPv6 (ip6tables)"
        } else {
            "no IPv6 rules"
        };
        format!("# IPv6: {self} → {outcome}\n")
    }
}

impl fmt::Display for Ipv6Decision {
    /// The reason alone, e.g. `global address fd00::2 on eth0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ipv6Decision::DualStackFlag => f.write_str("--dual-stack"),
            Ipv6Decision::Ipv6Range { flag, range } => {
                write!(f, "{flag} lists the IPv6 range {range}")
            }
            Ipv6Decision::NotRequested => f.write_str("not requested by the flags"),
            Ipv6Decision::GlobalAddress { addr, interface } => {
                write!(f, "global address {addr} on {interface}")
            }
            Ipv6Decision::NoGlobalAddress => f.write_str("no global address"),
            Ipv6Decision::KernelWithoutIpv6 => f.write_str("this kernel has no IPv6"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace with IPv6 enabled: loopback, a veth's link-local address, a ULA (scope global
    /// for the kernel) and a documentation address.
    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 80     eth0
20010db8000000000000000000000002 05 40 00 c0    net1
";

    fn parse(text: &str) -> NamespaceIpv6 {
        NamespaceIpv6::parse(text, Path::new("/proc/net/if_inet6")).expect("parses")
    }

    #[test]
    fn parses_if_inet6_and_finds_the_first_routable_address() {
        let ns = parse(IF_INET6);
        let NamespaceIpv6::Addresses(all) = &ns else {
            panic!("addresses expected: {ns:?}");
        };
        assert_eq!(all.len(), 4);
        assert_eq!(
            all[1].addr,
            "fe80::fc:ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(all[1].scope, SCOPE_LINK);
        let first = ns.first_routable().expect("a routable address");
        assert_eq!(first.addr, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(first.interface, "eth0");
    }

    #[test]
    fn loopback_and_link_local_are_not_routable() {
        let only_local = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
";
        assert_eq!(parse(only_local).first_routable(), None);
        assert_eq!(parse("").first_routable(), None);
        // A link-local address the kernel labels global (it never does, but the address decides).
        let mislabelled = "fe800000000000000000000000000001 04 40 00 80 eth0\n";
        assert_eq!(parse(mislabelled).first_routable(), None);
        // Site-local (deprecated) addresses are routable inside a site.
        let site = "fec00000000000000000000000000001 04 40 40 80 eth0\n";
        assert!(parse(site).first_routable().is_some());
    }

    #[test]
    fn malformed_if_inet6_is_an_error_naming_the_line() {
        for bad in [
            "fd00::2 04 40 00 80 eth0\n",
            "fd000000000000000000000000000002 04 40 00 80\n",
            "fd000000000000000000000000000002 04 40 zz 80 eth0\n",
        ] {
            let err = NamespaceIpv6::parse(bad, Path::new("/proc/thread-self/net/if_inet6"))
                .expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains("/proc/thread-self/net/if_inet6"), "{msg}");
            assert!(msg.contains("line 1"), "{msg}");
        }
    }

    #[test]
    fn flags_win_over_the_namespace() {
        let ns = parse(IF_INET6);
        assert_eq!(
            Ipv6Decision::from_flags(true, None).with_namespace(&NamespaceIpv6::Unsupported),
            Ipv6Decision::DualStackFlag
        );
        let range: IpNet = "fd00::/8".parse().unwrap();
        let d = Ipv6Decision::from_flags(false, Some(("-x", range))).with_namespace(&ns);
        assert_eq!(d, Ipv6Decision::Ipv6Range { flag: "-x", range });
        assert!(d.captures());
    }

    #[test]
    fn the_namespace_decides_when_the_flags_do_not() {
        let global = Ipv6Decision::NotRequested.with_namespace(&parse(IF_INET6));
        assert!(global.captures());
        assert_eq!(
            global.comment(),
            "# IPv6: global address fd00::2 on eth0 → capturing IPv6 (ip6tables)\n"
        );
        let local = Ipv6Decision::NotRequested.with_namespace(&parse(
            "fe800000000000000000000000000001 04 40 20 80 eth0\n",
        ));
        assert!(!local.captures());
        assert_eq!(
            local.comment(),
            "# IPv6: no global address → no IPv6 rules\n"
        );
        let none = Ipv6Decision::NotRequested.with_namespace(&NamespaceIpv6::Unsupported);
        assert!(!none.captures());
        assert_eq!(
            none.comment(),
            "# IPv6: this kernel has no IPv6 → no IPv6 rules\n"
        );
        assert!(!Ipv6Decision::NotRequested.captures());
    }
}
