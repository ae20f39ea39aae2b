//! IPv6 must not bypass the sidecar. The pod gets a global (ULA) IPv6 address next to its IPv4 one,
//! the "external" namespace serves httpbin on an IPv6 address, and `sluice init` runs with the
//! documented flags (`-i '*' -b ''`, no `--dual-stack`). istio-iptables would write IPv4 rules only
//! and the app's `curl -6` would reach the server directly, whatever REGISTRY_ONLY says; sluice sees
//! the global address, captures IPv6 too, and the sidecar (listening on `[::]:15001` as well)
//! applies the mesh policy to IPv6 destinations exactly as to IPv4 ones.

use std::net::Ipv6Addr;
use std::time::Duration;

use sluice_e2e::config::mesh_configmap;
use sluice_e2e::process::Proc;
use sluice_e2e::servers::{httpbin_command, wait_for_204};
use sluice_e2e::{eventually, Curl, Netns, SidecarOpts, TestEnv};

const EXT_HOST: &str = "ext6.test";

/// A ServiceEntry for the IPv6 server by name, `resolution: NONE`: the sidecar forwards to the
/// original destination, so this also proves it reads IPv6 original destinations
/// (`IP6T_SO_ORIGINAL_DST`).
const SE_EXT6: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: ext6
spec:
  hosts:
  - ext6.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: NONE
  location: MESH_EXTERNAL
";

/// The namespace's one non-loopback link (the test's veth end).
fn veth_of(ns: &Netns) -> String {
    let links = ns.ip(&["-o", "link", "show"]);
    let names: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name != "lo")
        .collect();
    assert_eq!(
        names.len(),
        1,
        "expected one veth in {}:\n{links}",
        ns.name()
    );
    names[0].clone()
}

/// Adds `addr/64` to the namespace's veth, usable at once (`nodad`: no duplicate address
/// detection delay on a link with one peer).
fn add_ipv6(ns: &Netns, addr: Ipv6Addr) {
    let dev = veth_of(ns);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        &dev,
        "nodad",
    ]);
}

/// `curl -6` from the pod; `-g` so the brackets of an IPv6 literal are not curl globs.
fn curl6(env: &TestEnv, url: &str) -> Curl {
    env.curl(url).arg("-6").arg("-g").max_time(10.0)
}

#[test]
fn ipv6_egress_is_captured_without_dual_stack() {
    let mut env = TestEnv::new("ipv6_egress_is_captured");
    let subnet = u16::from(env.hosts.subnet);
    // ULAs (fd00::/8) are "scope global" for the kernel: exactly what must not bypass the sidecar.
    let pod6 = Ipv6Addr::new(0xfd00, 0x5c, subnet, 0, 0, 0, 0, 2);
    let ext6 = Ipv6Addr::new(0xfd00, 0x5c, subnet, 0, 0, 0, 0, 0x10);
    add_ipv6(&env.pod, pod6);
    add_ipv6(&env.ext, ext6);

    let mut httpbin6 = vec![Proc::spawn(
        "httpbin-ipv6",
        httpbin_command(&env.ext, env.dir(), &[format!("[{ext6}]:80")], None),
        env.dir(),
        &env.logs,
        None,
        libc::SIGINT,
    )];
    wait_for_204(
        &format!("httpbin on [{ext6}]:80"),
        Duration::from_secs(30),
        &mut httpbin6,
        &env.logs,
        || {
            Curl::new(&env.ext, env.dir(), &format!("http://[{ext6}]/status/204"))
                .arg("-6")
                .arg("-g")
        },
    );
    // Before any capture the app reaches the IPv6 server directly: whatever blocks it later is the
    // sidecar, not a missing route.
    curl6(&env, &format!("http://[{ext6}]/get"))
        .run()
        .expect_status(200);

    env.config
        .write("istio-configmap.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.start_sidecar(SidecarOpts::captured());

    // `sluice init` said why it captures IPv6, and the rules are there.
    let init_log = std::fs::read_to_string(env.dir().join("sidecar-init.log"))
        .unwrap_or_else(|e| panic!("read the init log: {e}"));
    let veth = veth_of(&env.pod);
    assert!(
        init_log.contains(&format!(
            "# IPv6: global address {pod6} on {veth} → capturing IPv6 (ip6tables)"
        )),
        "{init_log}"
    );
    let nat6 = env.pod.run("ip6tables-save", &["-t", "nat"]);
    for rule in [
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(nat6.lines().any(|l| l == rule), "missing {rule:?}:\n{nat6}");
    }

    // REGISTRY_ONLY: an unknown IPv6 destination gets the sidecar's 502, not the server.
    let r = curl6(&env, &format!("http://[{ext6}]/get")).run();
    r.expect_status(502);
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    assert!(
        r.body.is_empty(),
        "502 from block_all has an empty body:\n{r}"
    );
    let e = env.wait_for_log("GET /get 502 to the IPv6 literal", |e| {
        e.method == "GET" && e.path == "/get" && e.response_code == 502
    });
    assert_eq!(e.route_name, "block_all", "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("[{ext6}]:80"),
        "the original IPv6 destination: {}",
        e.raw
    );
    let served = httpbin6[0].stdout();
    assert_eq!(
        served.matches("GET /get").count(),
        1,
        "only the pre-capture request may reach the IPv6 server:\n{served}"
    );

    // A ServiceEntry lets it through; the sidecar forwards to the original IPv6 destination.
    env.config.write("ext6.yaml", SE_EXT6);
    let resolve = format!("{EXT_HOST}:80:[{ext6}]");
    let r = eventually(
        "the ext6.test ServiceEntry lets IPv6 through",
        Duration::from_secs(5),
        || {
            let r = curl6(&env, &format!("http://{EXT_HOST}/get"))
                .arg("--resolve")
                .arg(&resolve)
                .run();
            if r.status == 200 {
                Ok(r)
            } else {
                Err(format!("{r}"))
            }
        },
    );
    assert_eq!(r.json()["headers"]["Host"], EXT_HOST, "{r}");
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log("GET /get 200 via the ServiceEntry", |e| {
        e.path == "/get" && e.response_code == 200 && e.authority == EXT_HOST
    });
    assert_eq!(e.upstream_cluster, "outbound|80||ext6.test", "{}", e.raw);
    assert_eq!(e.upstream_host, format!("[{ext6}]:80"), "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("[{ext6}]:80"),
        "{}",
        e.raw
    );

    // The IPv6 literal is still not a registered host.
    curl6(&env, &format!("http://[{ext6}]/get"))
        .run()
        .expect_status(502);
}
