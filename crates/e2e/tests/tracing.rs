//! Span export end to end, in the mesh of network namespaces ([`MeshEnv`]): real sidecars
//! (`sluice sidecar`, inbound capture with `sluice init`) report to a Zipkin receiver on the hub
//! (crates/proxy/tests/tracing_receiver.py, Python's HTTP server accepting `POST /api/v2/spans`),
//! configured as in Istio: the mesh's `defaultProviders.tracing` names an `extensionProviders`
//! Zipkin whose `service` is `zipkin.istio-system.svc.cluster.local`, a ServiceEntry whose
//! endpoint is the hub.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_e2e::config::mesh_configmap;
use sluice_e2e::mesh::{MESH_FILE, NAMESPACE};
use sluice_e2e::prereq::tools;
use sluice_e2e::process::Proc;
use sluice_e2e::{eventually, MeshEnv, PodSpec};

const ZIPKIN_PORT: u16 = 9411;

fn spans(receiver: &Proc) -> Vec<Value> {
    receiver
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn two_sidecars_report_one_trace_to_zipkin() {
    two_sidecars_one_trace("tracing_zipkin", false);
}

/// The same with the sidecars configured by `sluice control` over xDS: the tracing fields of
/// the mesh config travel in its MeshConfig.
#[test]
fn two_sidecars_report_one_trace_with_config_from_the_control_plane() {
    two_sidecars_one_trace("tracing_xds", true);
}

fn two_sidecars_one_trace(test: &str, via_control_plane: bool) {
    let mut mesh = MeshEnv::new(test);
    let hub_ip = mesh.addrs.clock;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/tests/tracing_receiver.py");
    let mut cmd = mesh.hub.cmd(tools().venv.join("bin/python"));
    cmd.arg(&script)
        .args(["zipkin", "--bind", &hub_ip.to_string(), "--port"])
        .arg(ZIPKIN_PORT.to_string())
        .env("PYTHONUNBUFFERED", "1");
    let receiver = Proc::spawn("zipkin", cmd, mesh.dir(), &mesh.logs, None, libc::SIGTERM);

    mesh.config.write(
        MESH_FILE,
        &mesh_configmap(
            "ALLOW_ANY",
            "defaultProviders:\n  tracing: [zipkin]\nextensionProviders:\n- name: zipkin\n  zipkin:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\ndefaultConfig:\n  tracing:\n    sampling: 100\n",
        ),
    );
    mesh.apply(
        "zipkin.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: zipkin\nspec:\n  hosts: [zipkin.istio-system.svc.cluster.local]\n  ports: [{{number: {ZIPKIN_PORT}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {hub_ip}}}]\n"
        ),
    );
    if via_control_plane {
        mesh.start_control();
    }
    mesh.add_pods(vec![
        PodSpec::client(),
        PodSpec::customer(),
        PodSpec::preference(),
        PodSpec::recommendation("v1"),
    ]);

    let r = mesh.pod("client").get("http://customer:8080/");
    assert_eq!(r.status, 200, "{r}");

    // client's outbound (CLIENT) → customer's inbound (SERVER), one trace.
    let customer_host = format!("customer.{NAMESPACE}.svc.cluster.local:8080/*");
    let (client, server) = eventually(
        "the client→customer spans",
        Duration::from_secs(15),
        || {
            let all = spans(&receiver);
            let client = all
                .iter()
                .find(|s| {
                    s["kind"] == "CLIENT" && s["serviceName"] == format!("client.{NAMESPACE}")
                })
                .ok_or_else(|| format!("no CLIENT span of client.{NAMESPACE} in {all:#?}"))?
                .clone();
            let server = all
                .iter()
                .find(|s| {
                    s["kind"] == "SERVER"
                        && s["serviceName"] == format!("customer.{NAMESPACE}")
                        && s["traceId"] == client["traceId"]
                })
                .ok_or_else(|| format!("no SERVER span of customer.{NAMESPACE} in {all:#?}"))?
                .clone();
            Ok((client, server))
        },
    );
    assert_eq!(server["parentId"], client["id"], "{server:#}");
    assert!(client.get("parentId").is_none(), "{client:#}");
    assert_eq!(client["name"], customer_host, "{client:#}");
    assert_eq!(server["name"], customer_host, "{server:#}");
    assert_eq!(client["tags"]["http.status_code"], "200");
    assert_eq!(
        client["tags"]["upstream_cluster"],
        format!("outbound|8080||customer.{NAMESPACE}.svc.cluster.local")
    );
    assert_eq!(server["tags"]["istio.canonical_service"], "customer");
    assert_eq!(client["path"], "/api/v2/spans");
}
