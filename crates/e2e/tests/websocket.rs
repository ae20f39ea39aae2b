//! End-to-end proof that a WebSocket crosses two real sidecars (the client pod's captured
//! outbound side and the server pod's inbound capture on 15006), with the Python `websockets`
//! package as client and server (peers we did not write), and that the route's timeout covers
//! only the upgrade: the connection outlives it.

use std::process::Command;
use std::time::Duration;

use sluice_e2e::prereq::tools;
use sluice_e2e::process::Proc;
use sluice_e2e::{eventually, MeshEnv, PodSpec};

/// The echo server's port in the server pod.
const WS_PORT: u16 = 8765;

const SERVER: &str = r#"
from websockets.sync.server import serve

def echo(ws):
    for message in ws:
        ws.send("echo " + message)

with serve(echo, "0.0.0.0", 8765) as server:
    print("listening", flush=True)
    server.serve_forever()
"#;

/// Sends two messages, the second after the route's 1 s timeout, and prints the answers.
const CLIENT: &str = r#"
import sys, time
from websockets.sync.client import connect

with connect(sys.argv[1], open_timeout=5) as ws:
    ws.send("hello")
    print(ws.recv(timeout=5), flush=True)
    time.sleep(1.5)
    ws.send("after the route timeout")
    print(ws.recv(timeout=5), flush=True)
"#;

#[test]
fn websocket_through_outbound_and_inbound_sidecars() {
    let mut mesh = MeshEnv::new("websocket");
    let python = tools().venv.join("bin/python");
    let has_websockets = Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_websockets,
        "prerequisite missing: the Python package `websockets` in the test venv {} \
         (run scripts/install-test-deps.sh, or pip install -r scripts/requirements-test.txt)",
        tools().venv.display()
    );

    // A Service for the echo server's port, and a route with a timeout shorter than the session.
    let vip = mesh.addrs.ip(150);
    mesh.apply(
        "ws-socket.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata:
  name: ws-socket
spec:
  clusterIP: {vip}
  selector: {{app: ws}}
  ports: [{{name: http-ws, port: {WS_PORT}, targetPort: {WS_PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ws-socket
spec:
  hosts: [ws-socket]
  http:
  - timeout: 1s
    route: [{{destination: {{host: ws-socket}}}}]
"
        ),
    );
    // The pod's HTTP app (chain.py, for the harness's readiness check) is not used; the echo
    // server beside it is.
    let server_spec = PodSpec::new("ws-v1", "ws", "v1").env("MODE", "recommendation");
    mesh.add_pods(vec![PodSpec::client(), server_spec]);

    let server_pod = mesh.pod("ws-v1");
    let mut cmd = server_pod.ns.cmd(&python);
    cmd.args(["-c", SERVER]).env("PYTHONDONTWRITEBYTECODE", "1");
    let mut server = Proc::spawn(
        "ws-server",
        cmd,
        mesh.dir(),
        &mesh.logs,
        None,
        libc::SIGTERM,
    );
    eventually(
        "the websockets server listens",
        Duration::from_secs(5),
        || {
            if let Some(status) = server.exited() {
                panic!(
                    "the websockets server exited ({status})\n{}",
                    mesh.logs.dump(40)
                );
            }
            match server.stdout().contains("listening") {
                true => Ok(()),
                false => Err(server.stdout()),
            }
        },
    );

    let client_pod = mesh.pod("client");
    let url = format!("ws://{vip}:{WS_PORT}/chat");
    let out = client_pod
        .ns
        .cmd(&python)
        .args(["-c", CLIENT, &url])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the websockets client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "websockets client to {url} failed: {}\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        mesh.logs.dump(40)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["echo hello", "echo after the route timeout"],
        "{stdout}"
    );

    // Both sidecars logged the exchange as Envoy does: 101 and the tunnel's bytes.
    let outbound =
        client_pod.wait_for_log("the client sidecar's 101 line", |e| e.response_code == 101);
    assert_eq!(outbound.path, "/chat", "{}", outbound.raw);
    assert!(
        outbound
            .upstream_cluster
            .starts_with(&format!("outbound|{WS_PORT}||ws-socket.")),
        "{}",
        outbound.raw
    );
    let sent: u64 = outbound.bytes_sent.parse().unwrap_or(0);
    assert!(sent > 0, "tunnel bytes are counted: {}", outbound.raw);
    let inbound =
        server_pod.wait_for_log("the server sidecar's 101 line", |e| e.response_code == 101);
    assert_eq!(inbound.path, "/chat", "{}", inbound.raw);
    server.stop();
}
