//! The iptables rules of istio-iptables, generated in its exact order and form.
//!
//! Operators diff `iptables-save` between Istio and sluice pods, so [`build`] follows
//! `istio/istio:tools/istio-iptables/pkg/capture/run.go` `Run()` step by step, and
//! [`RuleSet::to_restore`] prints like its `BuildV4Restore()`: per table (sorted by name) the
//! `-N` lines first, in order of first use, then every rule in the order it was generated.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ipnet::IpNet;

use super::config::{CaptureConfig, InboundPorts, InterceptionMode, OutboundRanges, OwnerGroups};

/// Istio's chains (`tools/istio-iptables/pkg/constants/constants.go`).
pub(crate) mod chain {
    /// nat OUTPUT jumps here for all protocols; decides what is captured outbound.
    pub const OUTPUT: &str = "ISTIO_OUTPUT";
    /// PREROUTING jumps here for TCP (nat in REDIRECT mode, mangle in TPROXY mode).
    pub const INBOUND: &str = "ISTIO_INBOUND";
    /// REDIRECT to the outbound capture port.
    pub const REDIRECT: &str = "ISTIO_REDIRECT";
    /// REDIRECT to the inbound capture port.
    pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    /// TPROXY mode: marks packets of established inbound connections so they route to lo.
    pub const DIVERT: &str = "ISTIO_DIVERT";
    /// TPROXY mode: hands new inbound connections to the inbound capture port.
    pub const TPROXY: &str = "ISTIO_TPROXY";
    /// `--drop-invalid`: drops out-of-window packets instead of letting them reset connections.
    pub const DROP: &str = "ISTIO_DROP";
    /// Prefix shared by every chain sluice (and Istio) owns; cleanup removes all of them.
    pub const PREFIX: &str = "ISTIO_";
}

/// In TPROXY mode the proxy's outbound connections to the app's own pod IP get this mark, so
/// ISTIO_INBOUND can tell them from the app talking to itself (`constants.OutboundMark`).
const TPROXY_OUTBOUND_MARK: &str = "1338";

/// Built-in chains and targets: never declared with `-N`.
const BUILTIN_CHAINS_AND_TARGETS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

/// Whether `name` is a kernel built-in chain (or a built-in verdict) rather than a user chain.
pub(crate) fn is_builtin(name: &str) -> bool {
    BUILTIN_CHAINS_AND_TARGETS.contains(&name)
}

/// The iptables tables sluice writes. The derived order is the print order (alphabetical, as
/// istio-iptables sorts table names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Marks and TPROXY (TPROXY mode, `--drop-invalid`).
    Mangle,
    /// REDIRECT capture.
    Nat,
}

impl Table {
    /// The name iptables uses.
    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`): the rules differ only in their addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

/// One rule: `-A CHAIN spec…`, or `-I CHAIN N spec…` for the few rules Istio inserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The table it lives in.
    pub table: Table,
    /// The chain it is added to.
    pub chain: String,
    /// `Some(n)` for `-I CHAIN n`, `None` for `-A CHAIN`.
    pub insert_at: Option<u32>,
    /// Matches and target, one argv item each (no shell quoting needed: values are validated).
    pub spec: Vec<String>,
}

impl Rule {
    /// The jump target (`-j X`), if any.
    pub fn target(&self) -> Option<&str> {
        self.spec
            .iter()
            .position(|arg| arg == "-j")
            .and_then(|i| self.spec.get(i + 1))
            .map(String::as_str)
    }

    /// The rule as an iptables-restore line.
    pub fn restore_line(&self) -> String {
        let head = match self.insert_at {
            Some(position) => format!("-I {} {}", self.chain, position),
            None => format!("-A {}", self.chain),
        };
        if self.spec.is_empty() {
            head
        } else {
            format!("{head} {}", self.spec.join(" "))
        }
    }
}

/// The rules for one address family, in generation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Which `*tables-restore` applies them.
    pub family: IpFamily,
    /// The rules, in the order istio-iptables generates them.
    pub rules: Vec<Rule>,
}

/// Builds an argv-style spec from displayable items: `spec!["-p", "tcp", "--dport", port]`.
macro_rules! spec {
    ($($item:expr),* $(,)?) => { vec![$($item.to_string()),*] };
}

impl RuleSet {
    fn new(family: IpFamily) -> Self {
        RuleSet {
            family,
            rules: Vec::new(),
        }
    }

    fn append(&mut self, table: Table, chain: &str, spec: Vec<String>) {
        self.rules.push(Rule {
            table,
            chain: chain.to_string(),
            insert_at: None,
            spec,
        });
    }

    fn insert(&mut self, table: Table, chain: &str, position: u32, spec: Vec<String>) {
        self.rules.push(Rule {
            table,
            chain: chain.to_string(),
            insert_at: Some(position),
            spec,
        });
    }

    /// iptables-restore input (also what `--dry-run` prints), e.g.
    /// `* nat`, `-N ISTIO_INBOUND`, …, `-A OUTPUT -j ISTIO_OUTPUT`, …, `COMMIT`.
    pub fn to_restore(&self) -> String {
        let mut lines_by_table: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        let mut declared: HashSet<(Table, &str)> = HashSet::new();
        // Chains that receive rules, in order of first use…
        for rule in &self.rules {
            if !is_builtin(&rule.chain) && declared.insert((rule.table, &rule.chain)) {
                lines_by_table
                    .entry(rule.table)
                    .or_default()
                    .push(format!("-N {}", rule.chain));
            }
        }
        // …then chains that are only jumped to (istio-iptables looks at a trailing `-j X`).
        for rule in &self.rules {
            if let [.., jump, target] = rule.spec.as_slice() {
                if jump == "-j" && !is_builtin(target) && declared.insert((rule.table, target)) {
                    lines_by_table
                        .entry(rule.table)
                        .or_default()
                        .push(format!("-N {target}"));
                }
            }
        }
        for rule in &self.rules {
            lines_by_table
                .entry(rule.table)
                .or_default()
                .push(rule.restore_line());
        }
        let mut out = String::new();
        for (table, lines) in lines_by_table {
            out.push_str(&format!("* {table}\n"));
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Family-specific constants of the generated rules.
struct FamilyAddresses {
    /// What "localhost" is: traffic to it is never captured (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
    loopback: String,
    /// The source address of the proxy's inbound passthrough connections (127.0.0.6 / ::6).
    passthrough_source: &'static str,
}

impl FamilyAddresses {
    fn of(cfg: &CaptureConfig, family: IpFamily) -> Self {
        match family {
            IpFamily::V4 => FamilyAddresses {
                loopback: cfg.ipv4_loopback.to_string(),
                passthrough_source: "127.0.0.6/32",
            },
            IpFamily::V6 => FamilyAddresses {
                loopback: "::1/128".to_string(),
                passthrough_source: "::6/128",
            },
        }
    }
}

fn in_family(cidr: &IpNet, family: IpFamily) -> bool {
    matches!(
        (cidr, family),
        (IpNet::V4(_), IpFamily::V4) | (IpNet::V6(_), IpFamily::V6)
    )
}

/// Generates the rules of one address family, in istio-iptables order (reference §1.3, §1.4).
pub(crate) fn build(cfg: &CaptureConfig, family: IpFamily) -> RuleSet {
    use Table::{Mangle, Nat};

    let mut set = RuleSet::new(family);
    let addr = FamilyAddresses::of(cfg, family);
    let tproxy = cfg.mode == InterceptionMode::Tproxy;

    // 1. Excluded NICs: nothing in or out of them is captured.
    for nic in &cfg.exclude_interfaces {
        set.append(Nat, "PREROUTING", spec!["-i", nic, "-j", "RETURN"]);
        set.append(Nat, "OUTPUT", spec!["-o", nic, "-j", "RETURN"]);
    }
    if tproxy {
        for nic in &cfg.exclude_interfaces {
            set.append(Mangle, "PREROUTING", spec!["-i", nic, "-j", "RETURN"]);
            set.append(Mangle, "OUTPUT", spec!["-o", nic, "-j", "RETURN"]);
        }
    }

    // 2. Inbound traffic from a VM's virtual NIC is outbound traffic of the VM: never inbound-captured.
    for nic in &cfg.reroute_interfaces {
        set.insert(Nat, "PREROUTING", 1, spec!["-i", nic, "-j", "RETURN"]);
    }

    // 3. Drop out-of-window packets instead of letting the kernel answer them with a reset.
    if cfg.drop_invalid {
        set.append(
            Mangle,
            "PREROUTING",
            spec!["-m", "conntrack", "--ctstate", "INVALID", "-j", chain::DROP],
        );
        set.append(Mangle, chain::DROP, spec!["-j", "DROP"]);
    }

    // 4. The HBONE tunnel port is served by the proxy directly; then the two REDIRECT chains.
    set.append(
        Nat,
        chain::INBOUND,
        spec![
            "-p",
            "tcp",
            "--dport",
            cfg.inbound_tunnel_port,
            "-j",
            "RETURN"
        ],
    );
    set.append(
        Nat,
        chain::REDIRECT,
        spec!["-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port],
    );
    set.append(
        Nat,
        chain::IN_REDIRECT,
        spec![
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            cfg.inbound_capture_port
        ],
    );

    // 5. Inbound capture.
    add_inbound_rules(&mut set, cfg, &addr);

    // 6. Outbound: every protocol enters ISTIO_OUTPUT (UDP is only touched by port rules).
    set.append(Nat, "OUTPUT", spec!["-j", chain::OUTPUT]);
    // Excluded ports come before the "connections back to self" redirect, so they win over it.
    for port in &cfg.outbound_ports_exclude {
        set.append(
            Nat,
            chain::OUTPUT,
            spec!["-p", "tcp", "--dport", port, "-j", "RETURN"],
        );
        set.append(
            Nat,
            chain::OUTPUT,
            spec!["-p", "udp", "--dport", port, "-j", "RETURN"],
        );
    }

    // 7. The proxy's inbound passthrough connects to the app from 127.0.0.6 (::6): those
    //    connections are proxy→app on the pod IP over lo and must reach the app, not be captured.
    set.append(
        Nat,
        chain::OUTPUT,
        spec!["-o", "lo", "-s", addr.passthrough_source, "-j", "RETURN"],
    );

    // 8. Proxy-owned traffic, per uid then per gid.
    let keep_app_to_app_on_lo = !cfg.outbound_include.has_loopback();
    for (owner_match, owners) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for owner in owners {
            // a. The app called its own service VIP: the proxy (client side) sends it to the pod
            //    IP over lo; send it to the inbound listener so inbound policy applies.
            set.append(
                Nat,
                chain::OUTPUT,
                spec![
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    addr.loopback,
                    "-p",
                    "tcp",
                    "!",
                    "--dport",
                    cfg.inbound_tunnel_port,
                    "-m",
                    "owner",
                    owner_match,
                    owner,
                    "-j",
                    chain::IN_REDIRECT
                ],
            );
            // b. App → app over lo is not captured, unless the user asked for a loopback range.
            if keep_app_to_app_on_lo {
                set.append(
                    Nat,
                    chain::OUTPUT,
                    spec![
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        "!",
                        owner_match,
                        owner,
                        "-j",
                        "RETURN"
                    ],
                );
            }
            // c. Everything else the proxy sends (TCP and UDP) goes out as is: loop avoidance.
            set.append(
                Nat,
                chain::OUTPUT,
                spec!["-m", "owner", owner_match, owner, "-j", "RETURN"],
            );
        }
    }

    // 9. Owner-group filter (env-only knobs).
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for group in groups {
                set.append(
                    Nat,
                    chain::OUTPUT,
                    spec!["-m", "owner", "--gid-owner", group, "-j", "RETURN"],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut rule = Vec::new();
            for group in groups {
                rule.extend(spec!["-m", "owner", "!", "--gid-owner", group]);
            }
            rule.extend(spec!["-j", "RETURN"]);
            set.append(Nat, chain::OUTPUT, rule);
        }
    }

    // 10. (DNS capture to an agent on 15053 is not supported: sluice has no DNS proxy.)

    // 11. Localhost (Envoy-aware apps, container-to-container) is never captured.
    set.append(
        Nat,
        chain::OUTPUT,
        spec!["-d", addr.loopback, "-j", "RETURN"],
    );

    // 12. Excluded destinations, before any inclusion.
    for cidr in cfg.outbound_exclude.iter().filter(|c| in_family(c, family)) {
        set.append(Nat, chain::OUTPUT, spec!["-d", cidr, "-j", "RETURN"]);
    }

    // 13. Ports captured whatever the destination.
    for port in &cfg.outbound_ports_include {
        set.append(
            Nat,
            chain::OUTPUT,
            spec!["-p", "tcp", "--dport", port, "-j", chain::REDIRECT],
        );
    }

    // 14. Included destinations (and the VM NICs' traffic to them).
    match &cfg.outbound_include {
        OutboundRanges::None => {}
        OutboundRanges::All => {
            set.append(Nat, chain::OUTPUT, spec!["-j", chain::REDIRECT]);
            for nic in &cfg.reroute_interfaces {
                set.insert(
                    Nat,
                    "PREROUTING",
                    1,
                    spec!["-i", nic, "-j", chain::REDIRECT],
                );
            }
        }
        OutboundRanges::Cidrs(cidrs) => {
            for cidr in cidrs.iter().filter(|c| in_family(c, family)) {
                for nic in &cfg.reroute_interfaces {
                    set.insert(
                        Nat,
                        "PREROUTING",
                        1,
                        spec!["-i", nic, "-d", cidr, "-j", chain::REDIRECT],
                    );
                }
                set.append(Nat, chain::OUTPUT, spec!["-d", cidr, "-j", chain::REDIRECT]);
            }
        }
    }

    // 15. TPROXY bookkeeping in mangle.
    if tproxy {
        add_tproxy_mark_rules(&mut set, cfg, &addr);
    }
    set
}

/// Step 5 of `Run()`: `handleInboundPortsInclude`.
fn add_inbound_rules(set: &mut RuleSet, cfg: &CaptureConfig, addr: &FamilyAddresses) {
    use Table::{Mangle, Nat};

    if cfg.inbound_ports == InboundPorts::None {
        return;
    }
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let table = if tproxy {
        // Established inbound connections: mark and accept, so policy routing delivers them to
        // the proxy's transparent socket on lo.
        set.append(
            Mangle,
            chain::DIVERT,
            spec!["-j", "MARK", "--set-mark", cfg.tproxy_mark],
        );
        set.append(Mangle, chain::DIVERT, spec!["-j", "ACCEPT"]);
        // New inbound connections: hand them to the inbound capture port, keeping the original
        // source and destination.
        set.append(
            Mangle,
            chain::TPROXY,
            spec![
                "!",
                "-d",
                addr.loopback,
                "-p",
                "tcp",
                "-j",
                "TPROXY",
                "--tproxy-mark",
                format!("{}/0xffffffff", cfg.tproxy_mark),
                "--on-port",
                cfg.inbound_capture_port
            ],
        );
        Mangle
    } else {
        Nat
    };
    set.append(
        table,
        "PREROUTING",
        spec!["-p", "tcp", "-j", chain::INBOUND],
    );

    match &cfg.inbound_ports {
        InboundPorts::None => {}
        InboundPorts::AllExcept(excluded) => {
            for port in excluded {
                set.append(
                    table,
                    chain::INBOUND,
                    spec!["-p", "tcp", "--dport", port, "-j", "RETURN"],
                );
            }
            if tproxy {
                set.append(
                    Mangle,
                    chain::INBOUND,
                    spec![
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        chain::DIVERT
                    ],
                );
                set.append(
                    Mangle,
                    chain::INBOUND,
                    spec!["-p", "tcp", "-j", chain::TPROXY],
                );
            } else {
                set.append(
                    Nat,
                    chain::INBOUND,
                    spec!["-p", "tcp", "-j", chain::IN_REDIRECT],
                );
            }
        }
        InboundPorts::Only(ports) => {
            for port in ports {
                if tproxy {
                    set.append(
                        Mangle,
                        chain::INBOUND,
                        spec![
                            "-p",
                            "tcp",
                            "--dport",
                            port,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            chain::DIVERT
                        ],
                    );
                    set.append(
                        Mangle,
                        chain::INBOUND,
                        spec!["-p", "tcp", "--dport", port, "-j", chain::TPROXY],
                    );
                } else {
                    set.append(
                        Nat,
                        chain::INBOUND,
                        spec!["-p", "tcp", "--dport", port, "-j", chain::IN_REDIRECT],
                    );
                }
            }
        }
    }
}

/// The end of `Run()` in TPROXY mode: connection marks that keep proxy↔app traffic on lo from
/// being diverted back into the proxy.
fn add_tproxy_mark_rules(set: &mut RuleSet, cfg: &CaptureConfig, addr: &FamilyAddresses) {
    use Table::Mangle;

    let mark = cfg.tproxy_mark;
    // Remember the mark the proxy's original_src filter put on a packet, per connection.
    set.append(
        Mangle,
        "PREROUTING",
        spec![
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--save-mark"
        ],
    );
    // Already-marked proxy → app packets must not be marked again.
    set.append(
        Mangle,
        "OUTPUT",
        spec!["-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    // App calls a VIP → proxy outbound → (mark 1338) → proxy inbound → app.
    for (owner_match, owners) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for owner in owners {
            set.append(
                Mangle,
                "OUTPUT",
                spec![
                    "!",
                    "-d",
                    addr.loopback,
                    "-p",
                    "tcp",
                    "-o",
                    "lo",
                    "-m",
                    "owner",
                    owner_match,
                    owner,
                    "-j",
                    "MARK",
                    "--set-mark",
                    TPROXY_OUTBOUND_MARK
                ],
            );
        }
    }
    // Replies of the workload carry the connection's mark, so policy routing sends them to lo.
    set.append(
        Mangle,
        "OUTPUT",
        spec![
            "-p",
            "tcp",
            "-m",
            "connmark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--restore-mark"
        ],
    );
    // Never divert a packet that already went through TPROXY (infinite redirect)…
    set.insert(
        Mangle,
        chain::INBOUND,
        1,
        spec!["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    // …nor the proxy's passthrough connections to the app (source 127.0.0.6 / ::6)…
    set.insert(
        Mangle,
        chain::INBOUND,
        2,
        spec![
            "-p",
            "tcp",
            "-s",
            addr.passthrough_source,
            "-i",
            "lo",
            "-j",
            "RETURN"
        ],
    );
    // …nor app → app on the pod IP, unless the proxy marked it as outbound-to-self.
    set.insert(
        Mangle,
        chain::INBOUND,
        3,
        spec![
            "-p",
            "tcp",
            "-i",
            "lo",
            "-m",
            "mark",
            "!",
            "--mark",
            TPROXY_OUTBOUND_MARK,
            "-j",
            "RETURN"
        ],
    );
}
