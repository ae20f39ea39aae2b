//! `sluice init` against a real kernel: apply, re-apply, switch modes and clean up the rules in a
//! throwaway network namespace, and check that captured traffic really reaches the capture port.
//!
//! Needs root, `ip` (iproute2) and iptables. A missing prerequisite fails the test with its name;
//! nothing is skipped. Each test uses its own namespace, deleted even when the test fails.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::init::{generate, run, InitArgs};

/// The argv the Istio injector gives istio-init for a default pod.
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

/// The `sluice init` line of docs/egress-control.md: no `--dual-stack`.
const DOCS_ARGV: &[&str] = &[
    "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "",
];

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Fails (never skips) when the test cannot run here, naming what is missing.
fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "init_netns tests must run as root: they create network namespaces and change iptables"
    );
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
    ] {
        assert!(
            find_program(program).is_some(),
            "{program} not found: install the {package} package (needed by the init_netns tests)"
        );
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace named for this test and process, deleted on drop (also on panic).
struct Netns {
    name: String,
}

impl Netns {
    fn create(test: &str) -> Netns {
        require_prerequisites();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sluice-init-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        command_output("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        // Loopback is down in a new namespace; the capture test connects through it.
        netns.enter(|| command_output("ip", &["link", "set", "lo", "up"]));
        netns
    }

    /// Runs `f` on a fresh thread that has joined the namespace. The network namespace is a
    /// per-thread attribute, and programs spawned from that thread (iptables-restore, ip) and
    /// sockets it opens live in the namespace too; the test's own thread stays outside.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = ["/run/netns", "/var/run/netns"]
            .iter()
            .map(|dir| Path::new(dir).join(&self.name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("namespace file of {} not found", self.name));
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let file =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: setns with a valid namespace fd only changes this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn args(argv: &[&str]) -> InitArgs {
    InitArgs::try_parse_from(argv.iter().copied()).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn apply(argv: &[&str]) {
    run(&args(argv)).unwrap_or_else(|e| panic!("sluice init {argv:?} failed: {e:#}"));
}

/// `iptables-save -t TABLE` without the timestamp comments.
fn saved(table: &str) -> String {
    command_output("iptables-save", &["-t", table])
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn rules_of(saved: &str) -> Vec<&str> {
    saved
        .lines()
        .filter(|line| line.starts_with("-A "))
        .collect()
}

#[track_caller]
fn assert_has_rule(saved: &str, rule: &str) {
    let count = saved.lines().filter(|line| *line == rule).count();
    assert_eq!(count, 1, "expected exactly one {rule:?} in:\n{saved}");
}

fn ip_rules_with_mark() -> Vec<String> {
    command_output("ip", &["rule", "show"])
        .lines()
        .filter(|line| line.contains("fwmark 0x539"))
        .map(str::to_string)
        .collect()
}

#[test]
fn redirect_rules_apply_once_and_clean_up() {
    let netns = Netns::create("redirect");
    netns.enter(|| {
        let mut argv = INJECTED_POD_ARGV.to_vec();
        argv.extend(["-c", "veth-excluded", "-o", "15020"]);
        apply(&argv);
        let nat = saved("nat");
        for chain in ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"] {
            assert!(nat.contains(&format!(":{chain} - [0:0]")), "chain {chain} missing:\n{nat}");
        }
        for rule in [
            "-A PREROUTING -i veth-excluded -j RETURN",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A OUTPUT -o veth-excluded -j RETURN",
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A ISTIO_OUTPUT -p udp -m udp --dport 15020 -j RETURN",
            "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert_has_rule(&nat, rule);
        }
        // 2 excluded-NIC + 1 PREROUTING + 1 OUTPUT jumps, 5 ISTIO_INBOUND, 2 REDIRECT chains,
        // 2 -o + 1 passthrough + 6 owner + 2 final ISTIO_OUTPUT rules.
        assert_eq!(rules_of(&nat).len(), 22, "unexpected rules:\n{nat}");

        // Running init again (a restarted init container) leaves the same single copy.
        apply(&argv);
        assert_eq!(saved("nat"), nat, "re-applying changed the rules");

        let mut cleanup = argv.clone();
        cleanup.push("--cleanup");
        apply(&cleanup);
        let after = saved("nat");
        assert!(!after.contains("ISTIO"), "ISTIO state left after --cleanup:\n{after}");
        assert!(rules_of(&after).is_empty(), "rules left after --cleanup:\n{after}");
        // Cleaning a clean namespace is not an error.
        apply(&cleanup);
        apply(&["--cleanup"]);
    });
}

#[test]
fn tproxy_rules_and_policy_routing_apply_once_and_clean_up() {
    let netns = Netns::create("tproxy");
    netns.enter(|| {
        let argv = [
            "-u",
            "1337",
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-d",
            "15090,15021",
            "-i",
            "*",
            "-c",
            "veth-x",
        ];
        apply(&argv);
        apply(&argv);
        let mangle = saved("mangle");
        for rule in [
            "-A PREROUTING -i veth-x -j RETURN",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_DIVERT -j ACCEPT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -s 127.0.0.6/32 -i lo -p tcp -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY",
        ] {
            assert_has_rule(&mangle, rule);
        }
        // PREROUTING 3 (-c, jump, save-mark), OUTPUT 5 (-c, 4 marks), ISTIO_DIVERT 2,
        // ISTIO_TPROXY 1, ISTIO_INBOUND 7 (3 inserted, 2 excluded ports, divert, tproxy).
        assert_eq!(
            rules_of(&mangle).len(),
            18,
            "unexpected mangle rules:\n{mangle}"
        );
        assert_eq!(
            ip_rules_with_mark().len(),
            1,
            "expected one fwmark rule: {:?}",
            ip_rules_with_mark()
        );
        let table = command_output("ip", &["route", "show", "table", "133"]);
        assert!(table.contains("local default dev lo"), "table 133: {table}");

        apply(&[&argv[..], &["--cleanup"]].concat());
        for table in ["nat", "mangle"] {
            let after = saved(table);
            assert!(
                rules_of(&after).is_empty(),
                "{table} rules left after --cleanup:\n{after}"
            );
            assert!(
                !after.contains("ISTIO"),
                "{table} chains left after --cleanup:\n{after}"
            );
        }
        assert!(
            ip_rules_with_mark().is_empty(),
            "fwmark rule left: {:?}",
            ip_rules_with_mark()
        );
    });
}

#[test]
fn switching_from_tproxy_to_redirect_leaves_no_tproxy_state() {
    let netns = Netns::create("switch");
    netns.enter(|| {
        apply(&["-u", "1337", "-m", "TPROXY", "-b", "*", "-i", "*"]);
        apply(INJECTED_POD_ARGV);
        let mangle = saved("mangle");
        assert!(
            rules_of(&mangle).is_empty(),
            "TPROXY rules left in mangle:\n{mangle}"
        );
        assert!(
            !mangle.contains("ISTIO"),
            "TPROXY chains left in mangle:\n{mangle}"
        );
        assert!(
            ip_rules_with_mark().is_empty(),
            "fwmark rule left: {:?}",
            ip_rules_with_mark()
        );
        assert_has_rule(
            &saved("nat"),
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        );
    });
}

#[test]
fn dry_run_and_invalid_flags_change_nothing() {
    let netns = Netns::create("dryrun");
    netns.enter(|| {
        let mut argv = INJECTED_POD_ARGV.to_vec();
        argv.push("--dry-run");
        apply(&argv);
        let err = run(&args(&["-i", "*", "-x", "*"])).expect_err("-x '*' must be rejected");
        assert!(
            err.to_string().contains("-x/--istio-service-exclude-cidr"),
            "{err}"
        );
        for table in ["nat", "mangle"] {
            let state = saved(table);
            assert!(
                rules_of(&state).is_empty() && !state.contains("ISTIO"),
                "{table} changed:\n{state}"
            );
        }
    });
}

#[test]
fn dual_stack_applies_ip6tables_rules_and_cleans_them_up() {
    for (program, package) in [
        ("ip6tables-save", "iptables"),
        ("ip6tables-restore", "iptables"),
    ] {
        assert!(
            find_program(program).is_some(),
            "{program} not found: install the {package} package (needed by the init_netns tests)"
        );
    }
    let netns = Netns::create("dualstack");
    netns.enter(|| {
        let argv = [
            "-u",
            "1337",
            "-i",
            "*",
            "-x",
            "10.0.0.0/8,fd00::/8",
            "-b",
            "*",
            "--dual-stack",
        ];
        apply(&argv);
        apply(&argv);
        let nat6 = command_output("ip6tables-save", &["-t", "nat"]);
        for rule in [
            "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN",
            "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
            "-A ISTIO_OUTPUT -d fd00::/8 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ] {
            assert_has_rule(&nat6, rule);
        }
        assert!(
            !nat6.contains("10.0.0.0/8"),
            "IPv4 range in ip6tables:\n{nat6}"
        );
        assert_has_rule(&saved("nat"), "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN");
        // The inbound passthrough source ::6 must exist on lo (IPv6 loopback is one address).
        let lo = command_output("ip", &["-6", "addr", "show", "dev", "lo"]);
        assert!(lo.contains("inet6 ::6/128"), "::6 missing on lo:\n{lo}");

        apply(&[&argv[..], &["--cleanup"]].concat());
        let nat6 = command_output("ip6tables-save", &["-t", "nat"]);
        assert!(
            !nat6.contains("ISTIO"),
            "ip6tables state left after --cleanup:\n{nat6}"
        );
    });
}

/// The rules do what they are for: an app's outbound connection lands on the outbound capture
/// port, and the original destination is still readable there (`SO_ORIGINAL_DST`).
#[test]
fn outbound_connection_is_captured_with_its_original_destination() {
    let netns = Netns::create("capture");
    netns.enter(|| {
        // A route to 10.99.0.0/24 (over a veth, not lo) so the app can dial a "remote" service.
        command_output(
            "ip",
            &[
                "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
            ],
        );
        command_output("ip", &["addr", "add", "10.99.0.2/24", "dev", "svc0"]);
        command_output("ip", &["link", "set", "svc0", "up"]);
        command_output("ip", &["link", "set", "svc1", "up"]);
        apply(&["-p", "15001", "-u", "1337", "-i", "10.99.0.0/24"]);

        let listener = TcpListener::bind("0.0.0.0:15001").expect("bind the outbound capture port");
        let mut app = TcpStream::connect_timeout(
            &"10.99.0.1:80".parse().expect("address"),
            Duration::from_secs(5),
        )
        .expect("the connection to 10.99.0.1:80 is captured by the listener on 15001");
        let (mut captured, _) = listener.accept().expect("accept the captured connection");
        assert_eq!(
            original_destination(&captured),
            SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80)
        );

        app.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        captured.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    });
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: where the app meant to connect before REDIRECT.
fn original_destination(stream: &TcpStream) -> SocketAddrV4 {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the fd is a live socket and `addr`/`len` describe a writable sockaddr_in.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_ORIGINAL_DST: {}",
        std::io::Error::last_os_error()
    );
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )
}

fn require_ip6tables() {
    for (program, package) in [
        ("ip6tables-save", "iptables"),
        ("ip6tables-restore", "iptables"),
    ] {
        assert!(
            find_program(program).is_some(),
            "{program} not found: install the {package} package (needed by the init_netns tests)"
        );
    }
}

/// A veth pair `svc0`/`svc1`, both up, with `ipv6` (a `/64`) on `svc0` when given. Must run
/// inside the namespace. Without an address, `svc0` still gets its link-local one.
fn veth_pair(ipv6: Option<&str>) {
    command_output(
        "ip",
        &[
            "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
        ],
    );
    if let Some(addr) = ipv6 {
        // nodad: usable at once, without duplicate address detection's delay.
        command_output("ip", &["-6", "addr", "add", addr, "dev", "svc0", "nodad"]);
    }
    command_output("ip", &["link", "set", "svc0", "up"]);
    command_output("ip", &["link", "set", "svc1", "up"]);
}

fn nat6() -> String {
    command_output("ip6tables-save", &["-t", "nat"])
}

/// The documented `sluice init` line, without `--dual-stack`, in a namespace with a global IPv6
/// address: IPv6 is captured like IPv4 (istio-iptables would leave it uncaptured), the dry run
/// says why, the sidecar's listener gets the connection with its original IPv6 destination, and
/// `--cleanup` removes it all.
#[test]
fn global_ipv6_address_is_captured_without_dual_stack() {
    require_ip6tables();
    let netns = Netns::create("ipv6auto");
    netns.enter(|| {
        veth_pair(Some("fd00:db8:1::2/64"));

        let dry = generate(&args(&[DOCS_ARGV, &["--dry-run"]].concat()))
            .unwrap_or_else(|e| panic!("dry run: {e}"));
        assert!(
            dry.starts_with(
                "# IPv6: global address fd00:db8:1::2 on svc0 → capturing IPv6 (ip6tables)\n"
            ),
            "{dry}"
        );
        assert!(dry.contains("# IPv6 (ip6tables-restore)\n"), "{dry}");
        assert!(
            !nat6().contains("ISTIO"),
            "a dry run changed ip6tables:\n{}",
            nat6()
        );

        apply(DOCS_ARGV);
        apply(DOCS_ARGV);
        let rules6 = nat6();
        for rule in [
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert_has_rule(&rules6, rule);
        }
        let lo = command_output("ip", &["-6", "addr", "show", "dev", "lo"]);
        assert!(lo.contains("inet6 ::6/128"), "::6 missing on lo:\n{lo}");

        // The app's IPv6 connection lands on the capture port, and the proxy's own
        // `original_dst` (IP6T_SO_ORIGINAL_DST) names where it was going.
        let listener = TcpListener::bind("[::]:15001").expect("bind [::]:15001");
        let target: SocketAddr = "[fd00:db8:1::1]:80".parse().expect("address");
        let mut app = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .expect("the connection to [fd00:db8:1::1]:80 is captured by the listener on 15001");
        let (captured, _) = listener.accept().expect("accept the captured connection");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        let captured = runtime.block_on(async move {
            captured.set_nonblocking(true).expect("nonblocking");
            let stream = tokio::net::TcpStream::from_std(captured).expect("tokio stream");
            let dst = sluice_proxy::io::original_dst(&stream).expect("original destination");
            assert_eq!(dst, target);
            stream.into_std().expect("back to std")
        });
        captured.set_nonblocking(false).expect("blocking");
        app.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        (&captured).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");

        apply(&[DOCS_ARGV, &["--cleanup"]].concat());
        let after = nat6();
        assert!(
            !after.contains("ISTIO"),
            "IPv6 rules left after --cleanup:\n{after}"
        );
        assert!(
            rules_of(&after).is_empty(),
            "IPv6 rules left after --cleanup:\n{after}"
        );
    });
}

/// Link-local IPv6 cannot leave the pod: no ip6tables rules, and the dry run says so.
#[test]
fn link_local_only_ipv6_gets_no_ipv6_rules() {
    require_ip6tables();
    let netns = Netns::create("ipv6local");
    netns.enter(|| {
        veth_pair(None);
        let dry = generate(&args(&[DOCS_ARGV, &["--dry-run"]].concat()))
            .unwrap_or_else(|e| panic!("dry run: {e}"));
        assert!(
            dry.starts_with("# IPv6: no global address → no IPv6 rules\n"),
            "{dry}"
        );
        assert!(!dry.contains("ip6tables-restore"), "{dry}");
        apply(DOCS_ARGV);
        assert_has_rule(&saved("nat"), "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
        assert!(
            !nat6().contains("ISTIO"),
            "IPv6 rules without a global address:\n{}",
            nat6()
        );
    });
}
