//! The `Sidecar` resource's listeners in a mesh of network namespaces with iptables capture
//! (`sluice init -b '*'`, [`MeshEnv`]): an ingress listener delivering a captured port to
//! `defaultEndpoint` on another port, a `captureMode: NONE` ingress listener, egress scoped per
//! port, a bound egress listener (`127.0.0.1:8080`, no capture needed) routing by Host, opened and
//! closed live, and a Sidecar whose bound port clashes with the sidecar's own refused with file,
//! line and field while the last good one keeps serving.
//!
//! Pods: `client` (no app), `preference-v1` (calls `recommendation:8080`), `recommendation-v1`,
//! each app on 8080 (`apps/chain.py`), all in namespace `tutorial`.

use std::time::Duration;

use sluice_e2e::mesh::{service_yaml, APP_PORT, NAMESPACE};
use sluice_e2e::{eventually, CurlResult, MeshEnv, PodSpec};

/// How long a config change may take to show, polled (the contract says 1 s).
const CONFIG_POLL: Duration = Duration::from_secs(10);

fn fqdn(app: &str) -> String {
    format!("{app}.{NAMESPACE}.svc.cluster.local")
}

/// Polls `probe` until `ok` accepts its result.
#[track_caller]
fn until(what: &str, probe: impl Fn() -> CurlResult, ok: impl Fn(&CurlResult) -> bool) {
    eventually(what, CONFIG_POLL, || {
        let r = probe();
        if ok(&r) {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
}

fn is_recommendation(r: &CurlResult) -> bool {
    r.status == 200
        && r.body
            .starts_with("recommendation v1 from 'recommendation-v1'")
}

#[test]
fn sidecar_listeners_with_iptables_capture() {
    let mut mesh = MeshEnv::new("sidecar_listeners");
    let ips = mesh.add_pods(vec![
        PodSpec::client(),
        PodSpec::preference(),
        PodSpec::recommendation("v1"),
    ]);
    let rec_ip = ips[2];

    // === Ingress: captured port 9080 → the app on 127.0.0.1:8080; 7070 bound by the sidecar ===
    mesh.apply(
        "sidecar-recommendation.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: recommendation
spec:
  workloadSelector:
    labels: {app: recommendation}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 7070, protocol: HTTP, name: http-bound}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:8080
",
    );
    let rec = mesh.pod("recommendation-v1");
    until(
        "the hub reaches recommendation's ingress port 9080",
        || mesh.hub_curl(&format!("http://{rec_ip}:9080/")).run(),
        is_recommendation,
    );
    let e = rec.wait_for_log("inbound on 9080", |e| {
        e.upstream_cluster == "inbound|9080||" && e.response_code == 200
    });
    assert_eq!(
        e.upstream_host,
        format!("127.0.0.1:{APP_PORT}"),
        "{}",
        e.raw
    );
    assert_eq!(
        e.downstream_local_address,
        format!("{rec_ip}:9080"),
        "{}",
        e.raw
    );
    // The bound listener, reached from inside the pod (loopback is never captured).
    until(
        "recommendation's bound ingress listener 7070",
        || rec.curl("http://127.0.0.1:7070/").run(),
        is_recommendation,
    );
    rec.wait_for_log("inbound on the bound 7070", |e| {
        e.upstream_cluster == "inbound|7070||" && e.response_code == 200
    });

    // === Egress per port: recommendation on 8080 only; 9080 belongs to the catch-all ===
    // recommendation gets a second port (9080 → the app's 8080).
    mesh.apply(
        "service-recommendation.yaml",
        &service_yaml(
            "recommendation",
            mesh.service_ip("recommendation"),
            APP_PORT,
        )
        .replace(
            "  - name: http\n",
            "  - name: http-alt\n    port: 9080\n    targetPort: 8080\n  - name: http\n",
        ),
    );
    let client_sidecar = |extra: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: client
spec:
  workloadSelector:
    labels: {{app: client}}
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
  egress:
{extra}  - port: {{number: 8080, protocol: HTTP, name: http}}
    hosts: [./{rec}]
  - hosts: [./{pref}]
",
            rec = fqdn("recommendation"),
            pref = fqdn("preference"),
        )
    };
    mesh.apply("sidecar-client.yaml", &client_sidecar(""));
    let client = mesh.pod("client");
    let service_url = |app: &str, port: u16| format!("http://{app}:{port}/");
    until(
        "preference no longer imported on 8080",
        || client.get(&service_url("preference", 8080)),
        |r| r.status == 502,
    );
    let r = client.get(&service_url("recommendation", 8080));
    assert!(
        is_recommendation(&r),
        "recommendation is imported on 8080:\n{r}"
    );
    let r = client.get(&service_url("recommendation", 9080));
    assert_eq!(
        r.status, 502,
        "recommendation is not imported on 9080:\n{r}"
    );

    // === A bound egress listener: 127.0.0.1:8080, opened live, routing by Host ===
    let bound = format!(
        "  - port: {{number: 8080, protocol: HTTP, name: http-local}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [./{rec}, ./{pref}]
",
        rec = fqdn("recommendation"),
        pref = fqdn("preference"),
    );
    // Two listeners on port 8080 are refused by validation: the bound one replaces the captured.
    let with_bound = client_sidecar(&bound).replace(
        &format!(
            "  - port: {{number: 8080, protocol: HTTP, name: http}}\n    hosts: [./{}]\n",
            fqdn("recommendation")
        ),
        "",
    );
    mesh.apply("sidecar-client.yaml", &with_bound);
    let local = "http://127.0.0.1:8080/";
    until(
        "the bound egress listener opened and routes Host: recommendation",
        || client.curl(local).header("Host: recommendation:8080").run(),
        is_recommendation,
    );
    let r = client.curl(local).header("Host: preference").run();
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.body.starts_with("preference => recommendation v1"),
        "Host: preference goes to preference:\n{r}"
    );
    let r = client.curl(local).header("Host: customer").run();
    assert_eq!(r.status, 502, "a host the listener does not import:\n{r}");
    client.wait_for_log("through the bound listener", |e| {
        e.authority == "preference"
            && e.upstream_cluster == format!("outbound|8080||{}", fqdn("preference"))
    });

    // === A bad Sidecar (bound port 15001, the sidecar's own) is refused; the last good serves ===
    let bad = with_bound.replace(
        "number: 8080, protocol: HTTP, name: http-local",
        "number: 15001, protocol: HTTP, name: http-local",
    );
    mesh.apply("sidecar-client.yaml", &bad);
    let sidecar = client.sidecar();
    eventually("the refusal in the sidecar's log", CONFIG_POLL, || {
        let log = sidecar.stderr();
        let hit = log.lines().find(|l| {
            l.contains("sidecar-client.yaml:")
                && l.contains("Sidecar tutorial/client")
                && l.contains("spec.egress[0].port.number")
                && l.contains("port 15001 is the sidecar's own captured outbound port")
        });
        hit.map(|_| ()).ok_or_else(|| log.clone())
    });
    let r = client.curl(local).header("Host: recommendation:8080").run();
    assert!(
        is_recommendation(&r),
        "the last good Sidecar keeps serving:\n{r}"
    );

    // === The listener closes when the Sidecar no longer declares it ===
    mesh.apply("sidecar-client.yaml", &client_sidecar(""));
    until(
        "the bound egress listener closed",
        || client.curl(local).header("Host: recommendation:8080").run(),
        |r| r.exit_code == 7,
    );
}
