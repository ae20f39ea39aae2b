//! `sluice control --kube`: the control plane reads the cluster from an API server (the
//! in-test one that follows the list/watch protocol, crates/e2e/src/fake_apiserver.rs, run in
//! the pod's network namespace) and feeds a sidecar: the mesh config's REGISTRY_ONLY, a
//! ServiceEntry and seed 001's timeout come from the API; changed there, they change in the
//! sidecar; a deleted ServiceEntry closes its host; an object the validator refuses is
//! refused alone while the rest keeps serving; a Telemetry from the API filters the access log;
//! analysis messages are written to the objects' `status.validationMessages`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{eventually, SidecarOpts, TestEnv};

const API: &str = "127.0.0.1:16443";

fn mesh_config() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}})
}

fn service_entry() -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "httpbin-ext", "namespace": "default"},
        "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                 "resolution": "DNS"}})
}

fn virtual_service(timeout: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
        "metadata": {"name": "httpbin", "namespace": "default"},
        "spec": {"hosts": ["httpbin.org"],
                 "http": [{"timeout": timeout, "route": [{"destination": {"host": "httpbin.org"}}]}]}})
}

/// POSTs `body` to the fake API server's control endpoint `what`, from the pod.
fn fake(env: &TestEnv, what: &str, body: &Value) {
    let out = env
        .pod
        .cmd("curl")
        .args(["-sS", "-f", "-X", "POST", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("http://{API}/fake/{what}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "fake API server /fake/{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seconds until `/delay/2` answers 504 (the route timeout) — or the status if not 504.
fn timeout_of(env: &TestEnv) -> Result<Duration, String> {
    let started = Instant::now();
    let r = env.curl("http://httpbin.org/delay/2").max_time(5.0).run();
    match r.status {
        504 => Ok(started.elapsed()),
        _ => Err(format!("{r}")),
    }
}

#[test]
fn sluice_control_reads_the_kubernetes_api_and_follows_its_changes() {
    let mut env = TestEnv::new("kube_source");
    let objects = env.dir().join("objects.json");
    std::fs::write(
        &objects,
        json!([mesh_config(), service_entry(), virtual_service("1s")]).to_string(),
    )
    .unwrap();
    let mut api = env.pod.cmd(env!("CARGO_BIN_EXE_fake-apiserver"));
    api.arg(API).arg(&objects);
    env.start_process("apiserver", api);
    let kubeconfig = env.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, sluice_e2e::fake_apiserver::kubeconfig(API)).unwrap();
    let kubeconfig = kubeconfig.to_string_lossy().to_string();
    env.start_control_from(
        "control-kube",
        15010,
        &["--kube"],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    env.start_sidecar(SidecarOpts::captured().xds("127.0.0.1:15010"));

    // What the API holds: the ServiceEntry, REGISTRY_ONLY, the 1 s timeout.
    env.curl("http://httpbin.org/get").run().expect_status(200);
    env.curl("http://edition.cnn.com/").run().expect_status(502);
    let took = timeout_of(&env).expect("the 1 s timeout");
    assert!(took < Duration::from_millis(1900), "{took:?}");

    // Changed in the API: the timeout follows.
    fake(&env, "apply", &virtual_service("3s"));
    eventually("the 3 s timeout", Duration::from_secs(20), || {
        let r = env.curl("http://httpbin.org/delay/2").max_time(5.0).run();
        (r.status == 200).then_some(()).ok_or(format!("{r}"))
    });

    // A VirtualService the validator refuses is refused alone: the last good one serves.
    fake(&env, "apply", &virtual_service("3 seconds"));
    std::thread::sleep(Duration::from_millis(1500));
    let r = env.curl("http://httpbin.org/delay/2").max_time(5.0).run();
    r.expect_status(200);
    let log = env.server_log("control-kube");
    assert!(
        log.contains("kube:VirtualService/default/httpbin") && log.contains("timeout"),
        "the control plane names the refused object and field:\n{log}"
    );

    // The watch cut (an API server restart): changes made meanwhile still arrive.
    fake(&env, "cut", &json!({}));
    fake(&env, "apply", &virtual_service("1s"));
    eventually("the 1 s timeout again", Duration::from_secs(20), || {
        timeout_of(&env).and_then(|t| {
            (t < Duration::from_millis(1900))
                .then_some(())
                .ok_or(format!("{t:?}"))
        })
    });

    // A Telemetry from the API (telemetry.istio.io, written as v1alpha1): from then on only
    // failed requests are logged.
    fake(
        &env,
        "apply",
        &json!({"apiVersion": "telemetry.istio.io/v1alpha1", "kind": "Telemetry",
            "metadata": {"name": "mesh-default", "namespace": "istio-system"},
            "spec": {"accessLogging": [{"providers": [{"name": "envoy"}],
                                        "filter": {"expression": "response.code >= 400"}}]}}),
    );
    let mut probe = 0;
    eventually(
        "only failed requests logged (Telemetry from the API)",
        Duration::from_secs(20),
        || {
            probe += 1;
            let ok = format!("/get?probe={probe}");
            let failed = format!("/status/418?probe={probe}");
            env.curl(&format!("http://httpbin.org{ok}"))
                .run()
                .expect_status(200);
            env.curl(&format!("http://httpbin.org{failed}"))
                .run()
                .expect_status(418);
            let line = env.wait_for_log(&failed, |e| e.path == failed);
            let log = env.access_log();
            match log.iter().find(|e| e.path == ok) {
                Some(e) => Err(format!("a 200 is still logged: {}", e.raw)),
                None => Ok(line),
            }
        },
    );

    // Analysis goes to the objects' status, as istiod writes it: a VirtualService bound to a
    // Gateway that does not exist gets IST0101; an object without problems is left alone.
    fake(
        &env,
        "apply",
        &json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "orphan", "namespace": "default"},
            "spec": {"hosts": ["httpbin.org"], "gateways": ["missing-gateway"],
                     "http": [{"route": [{"destination": {"host": "httpbin.org"}}]}]}}),
    );
    let get = |path: &str| -> Value {
        let out = env
            .pod
            .cmd("curl")
            .args(["-sS", "-f"])
            .arg(format!("http://{API}{path}"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let status = eventually("IST0101 in the status", Duration::from_secs(20), || {
        let vs = get("/apis/networking.istio.io/v1/namespaces/default/virtualservices/orphan");
        let messages = vs["status"]["validationMessages"].clone();
        messages
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["type"]["code"] == "IST0101"))
            .then_some(messages.clone())
            .ok_or(format!("{vs}"))
    });
    assert_eq!(status[0]["level"], "ERROR", "{status}");
    assert_eq!(
        status[0]["type"]["name"], "ReferencedResourceNotFound",
        "{status}"
    );
    let se = get("/apis/networking.istio.io/v1/namespaces/default/serviceentries/httpbin-ext");
    assert!(
        se["status"].is_null(),
        "no status for an object without problems: {se}"
    );

    // Deleted in the API: the host is unknown again, and REGISTRY_ONLY blocks it.
    for (kind, name) in [
        ("VirtualService", "httpbin"),
        ("ServiceEntry", "httpbin-ext"),
    ] {
        fake(
            &env,
            "delete",
            &json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
                    "metadata": {"namespace": "default", "name": name}}),
        );
    }
    eventually("httpbin.org blocked", Duration::from_secs(20), || {
        let r = env.curl("http://httpbin.org/get").run();
        (r.status == 502).then_some(()).ok_or(format!("{r}"))
    });
}
