//! DestinationRule `tunnel` (Istio's TunnelSettings): the app's TLS to `www.google.com:443` is
//! routed to a corporate HTTP proxy (a real tinyproxy in the external namespace) and carried in a
//! CONNECT to `www.google.com:443`; the app's own TLS passes through untouched. The proxy's
//! refusal fails the stream (`UF`, `tunnel_connect_refused{403}`).

use sluice_e2e::config::mesh_configmap;
use sluice_e2e::prereq::which;
use sluice_e2e::{SidecarOpts, TestEnv};

/// The proxy host, its ServiceEntry (a static endpoint: the external namespace's own address),
/// and the route that sends `www.google.com`'s TLS to it.
fn config(proxy_ip: &str) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: corp-proxy
spec:
  hosts: [corp-proxy.internal]
  ports:
  - {{number: 3128, name: tcp-proxy, protocol: TCP}}
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: {proxy_ip}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts: [www.google.com]
  ports:
  - {{number: 443, name: tls, protocol: TLS}}
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: google-through-proxy
spec:
  hosts: [www.google.com]
  tls:
  - match:
    - port: 443
      sniHosts: [www.google.com]
    route:
    - destination:
        host: corp-proxy.internal
        port: {{number: 3128}}
"
    )
}

fn tunnel_rule(target_port: u16) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: corp-proxy
spec:
  host: corp-proxy.internal
  trafficPolicy:
    tunnel:
      protocol: CONNECT
      targetHost: www.google.com
      targetPort: {target_port}
"
    )
}

#[test]
fn a_tls_stream_is_tunnelled_through_an_http_proxy_with_connect() {
    let tinyproxy = which("tinyproxy")
        .expect("tinyproxy is missing (scripts/install-test-deps.sh installs the Debian package)");
    let mut env = TestEnv::new("tunnel_connect");
    let h = env.hosts;
    let conf = env.dir().join("tinyproxy.conf");
    let log = env.dir().join("tinyproxy.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::write(
        &conf,
        format!(
            "Port 3128\nListen {dns}\nTimeout 30\nAllow {cidr}\nConnectPort 443\nLogLevel Connect\nLogFile \"{log}\"\nMaxClients 20\n",
            dns = h.dns,
            cidr = h.cidr(),
            log = log.display()
        ),
    )
    .unwrap();
    // The proxy resolves the CONNECT target with the test's DNS.
    env.ext
        .set_resolv_conf(&format!("nameserver {}\noptions timeout:1\n", h.dns));
    let mut cmd = env.ext.cmd(&tinyproxy);
    cmd.args(["-d", "-c"]).arg(&conf);
    env.start_process("tinyproxy", cmd);

    env.config
        .write("istio-configmap.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("routes.yaml", &config(&h.dns.to_string()));
    env.config.write("tunnel.yaml", &tunnel_rule(443));
    env.start_sidecar(SidecarOpts::captured());

    // The app's TLS reaches www.google.com end to end (the test CA verifies it), but the
    // connection the sidecar made went to the proxy, which was asked for www.google.com:443.
    let r = sluice_e2e::wait::eventually(
        "the tunnelled call succeeds",
        std::time::Duration::from_secs(15),
        || {
            let r = env.curl("https://www.google.com/get").run();
            if r.status == 200 {
                Ok(r)
            } else {
                Err(format!("{r}"))
            }
        },
    );
    assert_eq!(r.json()["url"], "https://www.google.com/get", "{r}");
    let e = env.wait_for_log("the tunnelled stream's line", |e| {
        e.requested_server_name == "www.google.com" && e.response_flags == "-"
    });
    assert_eq!(
        e.upstream_cluster, "outbound|3128||corp-proxy.internal",
        "{}",
        e.raw
    );
    assert_eq!(e.upstream_host, format!("{}:3128", h.dns), "{}", e.raw);
    let proxy_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        proxy_log.contains("CONNECT www.google.com:443"),
        "the proxy was asked for www.google.com:443:\n{proxy_log}"
    );

    // The proxy allows CONNECT to 443 only: asked for 8443 it answers 403, and the stream
    // fails as an upstream connection failure that names the refusal.
    env.config.write("tunnel.yaml", &tunnel_rule(8443));
    let e = sluice_e2e::wait::eventually(
        "the refused tunnel is logged",
        std::time::Duration::from_secs(15),
        || {
            let r = env.curl("https://www.google.com/get").max_time(5.0).run();
            if r.status == 200 {
                return Err(format!("still tunnelled to 443: {r}"));
            }
            env.access_log()
                .into_iter()
                .find(|e| {
                    e.upstream_transport_failure_reason
                        .starts_with("tunnel_connect")
                })
                .ok_or_else(|| format!("no refused tunnel in the log yet: {r}"))
        },
    );
    assert_eq!(e.response_flags, "UF", "{}", e.raw);
    assert_eq!(
        e.upstream_transport_failure_reason, "tunnel_connect_refused{403}",
        "{}",
        e.raw
    );
}
