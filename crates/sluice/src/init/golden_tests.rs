//! Golden tests: the rules for a given argv, compared line by line with istio-iptables' goldens
//! (`istio/istio:tools/istio-iptables/pkg/capture/testdata/*.golden`,
//! `cni/pkg/plugin/testdata/basic.txt.golden`; reference `ecosystem.md` §1.3–1.4), minus the DNS
//! capture rules sluice does not generate.

use std::path::Path;

use super::config::CaptureConfig;
use super::ipv6::NamespaceIpv6;
use super::{config_for_namespace, render, report, rule_sets, InitArgs};

/// The `--dry-run` output for `argv`, with an empty `-u` meaning 1337 whatever `/etc/passwd` says.
fn rules_for(argv: &[&str]) -> String {
    let args = InitArgs::try_parse_from(argv.iter().copied()).expect("flags parse");
    let cfg = CaptureConfig::from_args(&args, "1337").expect("flags are valid");
    render(&rule_sets(&cfg))
}

/// Compares line by line so a failure names the first differing rule.
#[track_caller]
fn assert_rules(argv: &[&str], expected: &str) {
    let actual = rules_for(argv);
    let (actual_lines, expected_lines): (Vec<_>, Vec<_>) =
        (actual.lines().collect(), expected.lines().collect());
    for (i, (a, e)) in actual_lines.iter().zip(&expected_lines).enumerate() {
        assert_eq!(
            a,
            e,
            "line {} differs for {argv:?}; full output:\n{actual}",
            i + 1
        );
    }
    assert_eq!(
        actual_lines.len(),
        expected_lines.len(),
        "line count differs for {argv:?}; full output:\n{actual}"
    );
    assert_eq!(actual, expected);
}

/// The argv the Istio injector gives istio-init for a default pod (reference §1.7).
const INJECTED_POD_ARGV: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

/// The six proxy-owner rules for uid/gid 1337, shared by most goldens.
const OWNER_1337: &str = "\
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
";

/// The start of every nat table: chains, tunnel-port exemption, the two REDIRECT chains.
const NAT_HEAD: &str = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
";

const NAT_REDIRECT_CHAINS: &str = "\
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
";

#[test]
fn injected_default_pod_matches_cni_basic_golden_without_outbound_15020() {
    // Reference §1.3 listing (cni basic.txt.golden) minus its two `-o 15020` lines, which only
    // the CNI plugin adds.
    let expected = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
    assert_rules(INJECTED_POD_ARGV, expected);
}

#[test]
fn cni_basic_golden_with_outbound_15020_excluded() {
    // The full §1.3 listing: the CNI plugin's default excludeOutboundPorts is 15020.
    let mut argv = INJECTED_POD_ARGV.to_vec();
    argv.extend(["-o", "15020"]);
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 15020 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 15020 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(&argv, &expected);
}

#[test]
fn no_capture_flags_matches_empty_golden() {
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(&["-u", "1337"], &expected);
}

#[test]
fn ip_range_include_and_exclude() {
    // testdata/ip-range.golden (`-i 9.9.0.0/16 -x 1.1.0.0/16`), without its DNS rules.
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN
-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(
        &["-u", "1337", "-i", "9.9.0.0/16", "-x", "1.1.0.0/16"],
        &expected,
    );
}

#[test]
fn inbound_ports_include() {
    // testdata/inbound-ports-include.golden: `-b 32000,31000`; -d is ignored without "*".
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(
        &["-u", "1337", "-b", "32000,31000", "-d", "15090"],
        &expected,
    );
}

#[test]
fn outbound_ports_include() {
    // testdata/outbound-ports-include.golden: `-q 32000,31000`.
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(&["-u", "1337", "-q", "32000,31000"], &expected);
}

#[test]
fn outbound_ports_exclude() {
    // testdata/outbound-ports-exclude-single.golden (`-o 22`), and a list: one tcp and one udp
    // RETURN per port, before the connections-back-to-self rules.
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(&["-u", "1337", "-o", "22"], &expected);

    let listing = rules_for(&["-u", "1337", "-o", "22,80,443", "-i", "*"]);
    let excluded: Vec<&str> = listing
        .lines()
        .filter(|l| {
            l.starts_with("-A ISTIO_OUTPUT") && l.contains("--dport") && l.ends_with("RETURN")
        })
        .collect();
    assert_eq!(
        excluded,
        [
            "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN",
            "-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp --dport 80 -j RETURN",
            "-A ISTIO_OUTPUT -p udp --dport 80 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp --dport 443 -j RETURN",
            "-A ISTIO_OUTPUT -p udp --dport 443 -j RETURN",
        ]
    );
}

#[test]
fn exclude_interfaces() {
    // testdata/basic-exclude-nic.golden: `-c not-istio-nic`, first in PREROUTING and OUTPUT.
    let expected = format!(
        "{NAT_HEAD}\
-A PREROUTING -i not-istio-nic -j RETURN
-A OUTPUT -o not-istio-nic -j RETURN
{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(&["-u", "1337", "-c", "not-istio-nic"], &expected);
}

#[test]
fn kube_virt_interfaces_with_wildcard_and_cidrs() {
    // testdata/kube-virt-interfaces.golden and ipnets-with-kube-virt-interfaces.golden.
    let expected = format!(
        "{NAT_HEAD}\
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth1 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(&["-u", "1337", "-k", "eth1,eth2", "-i", "*"], &expected);

    let expected = format!(
        "{NAT_HEAD}\
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(
        &["-u", "1337", "-k", "eth1,eth2", "-i", "10.0.0.0/8"],
        &expected,
    );
}

#[test]
fn loopback_include_range_keeps_app_to_app_on_lo_captured() {
    // testdata/loopback-outbound-iprange.golden: with a loopback range in -i, the
    // `-o lo -m owner ! --uid-owner` RETURN rules are left out.
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_rules(&["-u", "3,4", "-g", "1,2", "-i", "127.1.2.3/32"], &expected);
}

#[test]
fn tproxy_mode_mangle_and_nat() {
    // testdata/tproxy.golden (IPv4 part), without its DNS rules.
    let expected = format!(
        "\
* mangle
-N ISTIO_DIVERT
-N ISTIO_TPROXY
-N ISTIO_INBOUND
-A PREROUTING -i not-istio-nic -j RETURN
-A OUTPUT -o not-istio-nic -j RETURN
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
COMMIT
{NAT_HEAD}\
-A PREROUTING -i not-istio-nic -j RETURN
-A OUTPUT -o not-istio-nic -j RETURN
{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN
-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT
COMMIT
"
    );
    let argv = [
        "-u",
        "1337",
        "-m",
        "TPROXY",
        "-b",
        "*",
        "-c",
        "not-istio-nic",
        "-i",
        "9.9.0.0/16",
        "-x",
        "1.1.0.0/16",
    ];
    assert_rules(&argv, &expected);
}

#[test]
fn tproxy_mode_with_inbound_port_list() {
    // testdata/inbound-ports-tproxy.golden: `-m TPROXY -b 32000,31000`.
    let expected = format!(
        "\
* mangle
-N ISTIO_DIVERT
-N ISTIO_TPROXY
-N ISTIO_INBOUND
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 32000 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_TPROXY
-A ISTIO_INBOUND -p tcp --dport 31000 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_TPROXY
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
COMMIT
{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(
        &["-u", "1337", "-m", "TPROXY", "-b", "32000,31000"],
        &expected,
    );
}

#[test]
fn drop_invalid_uses_istio_drop_chain() {
    let expected = format!(
        "\
* mangle
-N ISTIO_DROP
-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP
-A ISTIO_DROP -j DROP
COMMIT
{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(&["-u", "1337", "--drop-invalid"], &expected);
}

#[test]
fn outbound_owner_groups_filter() {
    // testdata/outbound-owner-groups.golden (ISTIO_OUTBOUND_OWNER_GROUPS=java,202).
    let expected = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    assert_rules(
        &["-u", "1337", "--outbound-owner-groups", "java,202"],
        &expected,
    );

    let listing = rules_for(&["-u", "1337", "--outbound-owner-groups-exclude", "888,ftp"]);
    assert!(listing.contains(
        "-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN\n-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN\n"
    ));
}

#[test]
fn dual_stack_adds_an_ipv6_rule_set() {
    // testdata/ipv6-inbound-ports.golden: the IPv6 rules use ::6/128 and ::1/128.
    let ipv4 = format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 5000 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}\
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"
    );
    let ipv6 = format!(
        "# IPv6 (ip6tables-restore)
{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 5000 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN
{}\
-A ISTIO_OUTPUT -d ::1/128 -j RETURN
COMMIT
",
        OWNER_1337.replace("127.0.0.1/32", "::1/128")
    );
    assert_rules(
        &["-u", "1337", "-b", "4000,5000", "--dual-stack"],
        &format!("{ipv4}{ipv6}"),
    );
}

#[test]
fn mixed_family_ranges_go_to_their_own_family() {
    let listing = rules_for(&[
        "-u",
        "1337",
        "-i",
        "10.0.0.0/8,fd00::/8",
        "-x",
        "10.1.0.0/16,fd00:1::/32",
    ]);
    let (v4, v6) = listing.split_once("# IPv6").expect("an IPv6 section");
    assert!(v4.contains("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN\n-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"));
    assert!(!v4.contains("fd00"));
    assert!(v6.contains(
        "-A ISTIO_OUTPUT -d fd00:1::/32 -j RETURN\n-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"
    ));
    assert!(!v6.contains("10.0.0.0/8"));
}

#[test]
fn custom_ports_marks_and_loopback() {
    let listing = rules_for(&[
        "-p",
        "16001",
        "-z",
        "16006",
        "-e",
        "16008",
        "-m",
        "TPROXY",
        "-b",
        "*",
        "-t",
        "42",
        "--ipv4-loopback-cidr",
        "127.0.0.0/8",
    ]);
    for line in [
        "-A ISTIO_INBOUND -p tcp --dport 16008 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
        "-A ISTIO_TPROXY ! -d 127.0.0.0/8 -p tcp -j TPROXY --tproxy-mark 42/0xffffffff --on-port 16006",
        "-A ISTIO_DIVERT -j MARK --set-mark 42",
        "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-I ISTIO_INBOUND 1 -p tcp -m mark --mark 42 -j RETURN",
    ] {
        assert!(listing.lines().any(|l| l == line), "missing {line:?} in\n{listing}");
    }
}

/// The `--dry-run` output for `argv` in a namespace whose `/proc/net/if_inet6` reads `if_inet6`
/// (`None`: a kernel without IPv6).
fn dry_run_in(argv: &[&str], if_inet6: Option<&str>) -> String {
    let mut argv = argv.to_vec();
    argv.push("--dry-run");
    let args = InitArgs::try_parse_from(argv.iter().copied()).expect("flags parse");
    assert!(args.dry_run);
    let namespace = || match if_inet6 {
        Some(text) => NamespaceIpv6::parse(text, Path::new("/proc/thread-self/net/if_inet6")),
        None => Ok(NamespaceIpv6::Unsupported),
    };
    let cfg = config_for_namespace(&args, "1337", namespace).expect("flags are valid");
    report(&cfg, &rule_sets(&cfg))
}

/// The `sluice init` line of docs/egress-control.md.
const DOCS_ARGV: &[&str] = &[
    "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "",
];

/// Loopback and a veth's link-local address: what every namespace with IPv6 enabled has.
const IF_INET6_LOCAL_ONLY: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
";

/// The docs' capture for IPv4, and for IPv6 with `::6`/`::1` as its loopback addresses.
fn docs_rules(family_v6: bool) -> String {
    let (passthrough, owners, loopback) = if family_v6 {
        (
            "::6/128",
            OWNER_1337.replace("127.0.0.1/32", "::1/128"),
            "::1/128",
        )
    } else {
        ("127.0.0.6/32", OWNER_1337.to_string(), "127.0.0.1/32")
    };
    format!(
        "{NAT_HEAD}{NAT_REDIRECT_CHAINS}\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN
{owners}\
-A ISTIO_OUTPUT -d {loopback} -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
    )
}

#[test]
fn a_global_ipv6_address_means_ipv6_is_captured_like_ipv4() {
    // No --dual-stack: istio-iptables would write IPv4 rules only and let IPv6 bypass the proxy.
    let if_inet6 =
        format!("{IF_INET6_LOCAL_ONLY}fd000000000000000000000000000002 04 40 00 80     eth0\n");
    let expected = format!(
        "# IPv6: global address fd00::2 on eth0 → capturing IPv6 (ip6tables)
{}# IPv6 (ip6tables-restore)
{}",
        docs_rules(false),
        docs_rules(true)
    );
    assert_eq!(dry_run_in(DOCS_ARGV, Some(&if_inet6)), expected);
    // A documentation address on a second interface counts just as well.
    let other = format!("{IF_INET6_LOCAL_ONLY}20010db8000000000000000000000002 05 40 00 80 net1\n");
    assert!(dry_run_in(DOCS_ARGV, Some(&other))
        .starts_with("# IPv6: global address 2001:db8::2 on net1 → capturing IPv6 (ip6tables)\n"));
}

#[test]
fn without_a_global_ipv6_address_there_are_no_ipv6_rules() {
    let expected = format!(
        "# IPv6: no global address → no IPv6 rules\n{}",
        docs_rules(false)
    );
    assert_eq!(dry_run_in(DOCS_ARGV, Some(IF_INET6_LOCAL_ONLY)), expected);
    assert_eq!(dry_run_in(DOCS_ARGV, Some("")), expected);
    assert_eq!(
        dry_run_in(DOCS_ARGV, None),
        format!(
            "# IPv6: this kernel has no IPv6 → no IPv6 rules\n{}",
            docs_rules(false)
        )
    );
}

#[test]
fn ipv6_flags_decide_without_looking_at_the_namespace() {
    let mut argv = DOCS_ARGV.to_vec();
    argv.push("--dual-stack");
    let listing = dry_run_in(&argv, None);
    assert_eq!(
        listing,
        format!(
            "# IPv6: --dual-stack → capturing IPv6 (ip6tables)\n{}# IPv6 (ip6tables-restore)\n{}",
            docs_rules(false),
            docs_rules(true)
        )
    );
    let listing = dry_run_in(&["-u", "1337", "-i", "*", "-x", "fd00:1::/32"], Some(""));
    assert!(
        listing.starts_with(
            "# IPv6: -x/--istio-service-exclude-cidr lists the IPv6 range fd00:1::/32 → capturing IPv6 (ip6tables)\n"
        ),
        "{listing}"
    );
}

#[test]
fn generate_is_the_dry_run_output_for_this_namespace() {
    let mut argv = INJECTED_POD_ARGV.to_vec();
    argv.push("--dry-run");
    let args = InitArgs::try_parse_from(argv).expect("flags parse");
    let namespace = super::ipv6::detect().expect("read this namespace's IPv6 addresses");
    let cfg = config_for_namespace(&args, "1337", || Ok(namespace.clone())).expect("valid");
    // What the test machine has decides the comment; the IPv4 rules are the injected pod's.
    let listing = super::generate(&args).expect("valid");
    assert_eq!(listing, report(&cfg, &rule_sets(&cfg)));
    assert!(listing.starts_with(&cfg.ipv6.comment()), "{listing}");
    assert!(listing.contains(&rules_for(INJECTED_POD_ARGV)), "{listing}");
}

#[test]
fn istio_spellings_of_flags_are_accepted() {
    for argv in [
        vec!["-n"],
        vec!["--dry-run"],
        vec!["--cleanup"],
        vec!["--cleanup-only"],
        vec!["--log_output_level", "default:info"],
        vec!["--log_as_json"],
        vec![
            "--envoy-port=15001",
            "--inbound-capture-port=15006",
            "--proxy-uid=1337",
            "--proxy-gid=1337",
            "--istio-inbound-interception-mode=REDIRECT",
            "--istio-service-cidr=*",
            "--istio-service-exclude-cidr=",
            "--istio-inbound-ports=*",
            "--istio-local-exclude-ports=15090",
            "--istio-local-outbound-ports-exclude=",
            "--istio-outbound-ports=",
            "--istio-exclude-interfaces=",
            "--kube-virt-interfaces=",
            "--istio-inbound-tproxy-mark=1337",
            "--istio-inbound-tproxy-route-table=133",
        ],
    ] {
        if let Err(e) = InitArgs::try_parse_from(argv.iter().copied()) {
            panic!("{argv:?} rejected: {e}");
        }
    }
    assert!(InitArgs::try_parse_from(["--no-such-flag"]).is_err());
}
