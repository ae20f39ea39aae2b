//! The independent xDS peer (`apps/xds_peer.py`: grpcio, Envoy's ADS from PyPI's xds-protos,
//! Istio's messages compiled from `crates/xds/proto`) against itself: its server and its client
//! agree on MCP-over-XDS as current istiod speaks it (v1 collections, older versions as aliases,
//! MeshConfig bare), so either can stand in for the other side when `sluice control` or
//! `sluice sidecar --xds` is tested. Loopback only; needs no root, no network namespace and no
//! sluice binary.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::xds_peer::{xds_peer_client, PeerError, XdsClientOptions, XdsPeerServer};

const SERVICE_ENTRY: &str = "networking.istio.io/v1/ServiceEntry";
const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";
const NACK_MESSAGE: &str = "core/v1alpha1/MeshConfig: rejected by the test";

fn config(version: &str, hosts: &[&str]) -> Value {
    json!({
        "version": version,
        SERVICE_ENTRY: [{
            "name": "default/httpbin-ext",
            "labels": {"app": "httpbin"},
            "annotations": {"note": "from the self-test"},
            "version": format!("rv-{version}"),
            "spec": {
                "hosts": hosts,
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
                "location": "MESH_INTERNAL",
            },
        }],
        // No name: MeshConfig travels as the bare message.
        MESH_CONFIG: [{
            "spec": {
                "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
                "accessLogFile": "/dev/stdout",
                "accessLogEncoding": "JSON",
                "connectTimeout": "10s",
            },
        }],
    })
}

/// The client's lines for responses (not the requests it sent), in order.
fn responses(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("sent").is_none()).collect()
}

fn sent(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("sent").is_some()).collect()
}

#[test]
fn xds_peer_harness_self_test() -> Result<(), PeerError> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e-xds-peer-")
        .tempdir()
        .map_err(|e| PeerError::from(format!("temp dir: {e}")))?;
    let server = XdsPeerServer::start(dir.path(), 0, &config("1", &["httpbin.org"]))?;
    assert!(server.port() != 0);

    // The client subscribes to both collections, ACKs the ServiceEntries and NACKs the
    // MeshConfig; it ends after the two first responses and the two pushed after the update.
    let addr = server.addr();
    let client = std::thread::spawn(move || {
        xds_peer_client(
            addr,
            &[SERVICE_ENTRY, MESH_CONFIG],
            &XdsClientOptions::default()
                .node_id("sidecar~10.0.0.1~sleep-1.default~default.svc.cluster.local")
                .node_metadata(json!({"NAMESPACE": "default", "LABELS": {"app": "sleep"}}))
                .nack(MESH_CONFIG, NACK_MESSAGE)
                .responses(4)
                .timeout(Duration::from_secs(30)),
        )
    });

    // The server sees the first request with the node, the ACK of version 1 and the NACK.
    let wait = Duration::from_secs(30);
    let first = server.wait_for(|r| r["type_url"] == SERVICE_ENTRY, wait)?;
    assert_eq!(first["has_node"], true, "{first}");
    assert_eq!(
        first["node_id"], "sidecar~10.0.0.1~sleep-1.default~default.svc.cluster.local",
        "{first}"
    );
    assert_eq!(first["version_info"], "", "{first}");
    assert_eq!(first["response_nonce"], "", "{first}");
    assert_eq!(first["unknown_fields"], json!([]), "{first}");
    let ack1 = server.wait_for(
        |r| r["type_url"] == SERVICE_ENTRY && r["response_nonce"] != "",
        wait,
    )?;
    assert_eq!(ack1["version_info"], "1", "{ack1}");
    assert_eq!(ack1["error_detail"], Value::Null, "{ack1}");
    assert_eq!(
        ack1["has_node"], false,
        "the node only on the first request: {ack1}"
    );
    let sent1 = server
        .responses()
        .into_iter()
        .find(|r| r["type_url"] == SERVICE_ENTRY)
        .expect("the server logged its response");
    assert_eq!(
        ack1["response_nonce"], sent1["nonce"],
        "the ACK echoes the nonce"
    );
    assert_eq!(sent1["resources"], 1, "{sent1}");
    let nack1 = server.wait_for(
        |r| r["type_url"] == MESH_CONFIG && !r["error_detail"].is_null(),
        wait,
    )?;
    assert_eq!(nack1["error_detail"], NACK_MESSAGE, "{nack1}");
    assert_eq!(
        nack1["version_info"], "",
        "a NACK carries the last version accepted (none): {nack1}"
    );
    assert_ne!(nack1["response_nonce"], "", "{nack1}");

    // Version 2 is pushed to the open stream.
    server.update(&config("2", &["httpbin.org", "postman-echo.com"]))?;
    let lines = client
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    let ack2 = server.wait_for(
        |r| r["type_url"] == SERVICE_ENTRY && r["version_info"] == "2",
        wait,
    )?;
    let nack2 = server.wait_for(
        |r| {
            r["type_url"] == MESH_CONFIG
                && !r["error_detail"].is_null()
                && r["response_nonce"] != nack1["response_nonce"]
        },
        wait,
    )?;
    assert_eq!(nack2["version_info"], "", "{nack2}");

    // What the client decoded.
    let resp = responses(&lines);
    let got: Vec<(&Value, &Value)> = resp
        .iter()
        .map(|r| (&r["type_url"], &r["version_info"]))
        .collect();
    assert_eq!(
        got,
        [
            (&json!(SERVICE_ENTRY), &json!("1")),
            (&json!(MESH_CONFIG), &json!("1")),
            (&json!(SERVICE_ENTRY), &json!("2")),
            (&json!(MESH_CONFIG), &json!("2")),
        ],
        "{lines:#?}"
    );
    let se = &resp[0]["resources"][0];
    assert_eq!(se["mcp"], true, "{se}");
    assert_eq!(se["name"], "default/httpbin-ext", "{se}");
    assert_eq!(se["labels"], json!({"app": "httpbin"}), "{se}");
    assert_eq!(
        se["annotations"],
        json!({"note": "from the self-test"}),
        "{se}"
    );
    assert_eq!(se["version"], "rv-1", "{se}");
    assert_eq!(
        se["body_type_url"],
        "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
    );
    assert_eq!(
        se["spec"],
        json!({
            "hosts": ["httpbin.org"],
            "ports": [{"number": 80, "protocol": "HTTP", "name": "http"}],
            "location": "MESH_INTERNAL",
            "resolution": "DNS",
        }),
        "{se}"
    );
    assert_eq!(resp[1]["resources"].as_array().map(Vec::len), Some(1));
    let mesh = &resp[1]["resources"][0];
    assert_eq!(
        mesh["mcp"], false,
        "the bare message, as istiod sends it: {mesh}"
    );
    assert_eq!(mesh["name"], "", "{mesh}");
    assert_eq!(mesh["labels"], json!({}), "{mesh}");
    assert_eq!(
        mesh["body_type_url"],
        "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig"
    );
    assert_eq!(mesh["spec"]["outboundTrafficPolicy"]["mode"], "ALLOW_ANY");
    assert_eq!(mesh["spec"]["accessLogFile"], "/dev/stdout");
    assert_eq!(mesh["spec"]["accessLogEncoding"], "JSON");
    assert_eq!(mesh["spec"]["connectTimeout"], "10s");
    let se2 = &resp[2]["resources"][0];
    assert_eq!(
        se2["spec"]["hosts"],
        json!(["httpbin.org", "postman-echo.com"])
    );
    assert_eq!(se2["version"], "rv-2");

    // What it answered: ACK with the response's version and nonce, NACK with the last good
    // version (none) and the message, as Envoy does (code 13, INTERNAL).
    let answers = sent(&lines);
    assert_eq!(answers.len(), 4, "{lines:#?}");
    for (r, a) in resp.iter().zip(&answers) {
        assert_eq!(a["type_url"], r["type_url"], "{a}");
        assert_eq!(a["response_nonce"], r["nonce"], "{a}");
        if r["type_url"] == MESH_CONFIG {
            assert_eq!(a["sent"], "nack", "{a}");
            assert_eq!(a["version_info"], "", "{a}");
            assert_eq!(
                a["error_detail"],
                json!({"code": 13, "message": NACK_MESSAGE}),
                "{a}"
            );
        } else {
            assert_eq!(a["sent"], "ack", "{a}");
            assert_eq!(a["version_info"], r["version_info"], "{a}");
            assert_eq!(a["error_detail"], Value::Null, "{a}");
        }
    }
    assert_eq!(ack2["response_nonce"], resp[2]["nonce"], "{ack2}");
    assert_eq!(nack2["response_nonce"], resp[3]["nonce"], "{nack2}");
    Ok(())
}

/// The client is a strict reader: a body that is not the collection's message is a wire error
/// (exit 2 with the resource named), not something it prints and ACKs.
#[test]
fn xds_peer_client_refuses_a_body_of_the_wrong_type() -> Result<(), PeerError> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e-xds-peer-")
        .tempdir()
        .map_err(|e| PeerError::from(format!("temp dir: {e}")))?;
    let server = XdsPeerServer::start(
        dir.path(),
        0,
        &json!({
            "version": "1",
            SERVICE_ENTRY: [{
                "name": "default/not-a-service-entry",
                "body_type": "istio.networking.v1alpha3.Gateway",
                "spec": {"selector": {"istio": "ingressgateway"}},
            }],
        }),
    )?;
    let err = xds_peer_client(
        server.addr(),
        &[SERVICE_ENTRY],
        &XdsClientOptions::default().timeout(Duration::from_secs(20)),
    )
    .expect_err("a Gateway body in the ServiceEntry collection must not decode");
    let msg = err.to_string();
    assert!(
        msg.contains("'default/not-a-service-entry': body is istio.networking.v1alpha3.Gateway")
            && msg.contains("exit status: 2"),
        "{msg}"
    );
    // It hung up instead of answering.
    let answered = server.requests().iter().any(|r| r["response_nonce"] != "");
    assert!(!answered, "{}", server.log_dump());
    Ok(())
}

/// Current istiod serves `networking.istio.io/v1/…` and `core/v1alpha1/MeshConfig`; the older
/// type URLs are aliases of the same collections: a config keyed by an alias is served under
/// the main type URL, and a request by an alias is answered with the same resources, under the
/// type URL it asked for.
#[test]
fn xds_peer_serves_aliases_as_their_collection() -> Result<(), PeerError> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e-xds-peer-")
        .tempdir()
        .map_err(|e| PeerError::from(format!("temp dir: {e}")))?;
    let server = XdsPeerServer::start(
        dir.path(),
        0,
        &json!({
            "version": "7",
            "networking.istio.io/v1beta1/ServiceEntry": [{
                "name": "default/se",
                "spec": {"hosts": ["httpbin.org"], "resolution": "DNS"},
            }],
            "security.istio.io/v1/AuthorizationPolicy": [{
                "name": "default/deny-all",
                "spec": {"action": "DENY", "rules": [{}]},
            }],
            "mesh.istio.io/v1alpha1/MeshConfig": [{"spec": {"accessLogFile": "/dev/stdout"}}],
        }),
    )?;
    let config = server
        .events()
        .into_iter()
        .find(|e| e["event"] == "config")
        .expect("a config event");
    assert_eq!(
        config["collections"],
        json!({
            SERVICE_ENTRY: 1,
            MESH_CONFIG: 1,
            "security.istio.io/v1/AuthorizationPolicy": 1,
        }),
        "{config}"
    );
    let types = [
        SERVICE_ENTRY,
        "networking.istio.io/v1alpha3/ServiceEntry",
        "networking.istio.io/v1beta1/ServiceEntry",
        "security.istio.io/v1beta1/AuthorizationPolicy",
        MESH_CONFIG,
        "mesh.istio.io/v1alpha1/MeshConfig",
    ];
    let lines = xds_peer_client(
        server.addr(),
        &types,
        &XdsClientOptions::default()
            .responses(types.len())
            .timeout(Duration::from_secs(20)),
    )?;
    let resp = responses(&lines);
    assert_eq!(resp.len(), types.len(), "{lines:#?}");
    for (r, t) in resp.iter().zip(types) {
        assert_eq!(
            r["type_url"], t,
            "the response echoes the type asked for: {r}"
        );
        assert_eq!(r["version_info"], "7", "{r}");
        let res = &r["resources"][0];
        if t.contains("ServiceEntry") {
            assert_eq!(res["name"], "default/se", "{r}");
            assert_eq!(res["spec"]["hosts"], json!(["httpbin.org"]), "{r}");
        } else if t.contains("AuthorizationPolicy") {
            assert_eq!(res["name"], "default/deny-all", "{r}");
            assert_eq!(
                res["body_type_url"],
                "type.googleapis.com/istio.security.v1beta1.AuthorizationPolicy",
                "{r}"
            );
            assert_eq!(res["spec"]["action"], "DENY", "{r}");
        } else {
            assert_eq!(res["mcp"], false, "{r}");
            assert_eq!(res["spec"]["accessLogFile"], "/dev/stdout", "{r}");
        }
    }
    let requests = server.requests();
    for t in types {
        let r = requests
            .iter()
            .find(|r| r["type_url"] == t)
            .unwrap_or_else(|| panic!("no request for {t}: {}", server.log_dump()));
        let main = if t.contains("ServiceEntry") {
            SERVICE_ENTRY
        } else if t.contains("AuthorizationPolicy") {
            "security.istio.io/v1/AuthorizationPolicy"
        } else {
            MESH_CONFIG
        };
        assert_eq!(r["collection"], main, "{r}");
    }
    Ok(())
}

/// The client refuses what istiod would not send: a MeshConfig inside an MCP Resource, and a
/// ServiceEntry without one (exit 2, nothing ACKed).
#[test]
fn xds_peer_client_refuses_the_wrong_envelope() -> Result<(), PeerError> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e-xds-peer-")
        .tempdir()
        .map_err(|e| PeerError::from(format!("temp dir: {e}")))?;
    let server = XdsPeerServer::start(
        dir.path(),
        0,
        &json!({
            "version": "1",
            SERVICE_ENTRY: [{"mcp": false, "spec": {"hosts": ["httpbin.org"]}}],
            MESH_CONFIG: [{
                "mcp": true,
                "name": "istio-system/mesh",
                "spec": {"accessLogFile": "/dev/stdout"},
            }],
        }),
    )?;
    let options = XdsClientOptions::default().timeout(Duration::from_secs(20));
    let err = xds_peer_client(server.addr(), &[MESH_CONFIG], &options)
        .expect_err("a MeshConfig in an MCP envelope must not decode");
    let msg = err.to_string();
    assert!(
        msg.contains("expected 'type.googleapis.com/istio.mesh.v1alpha1.MeshConfig'")
            && msg.contains("istiod sends it bare")
            && msg.contains("exit status: 2"),
        "{msg}"
    );
    let err = xds_peer_client(server.addr(), &[SERVICE_ENTRY], &options)
        .expect_err("a bare ServiceEntry must not decode");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "a resource's type_url is 'type.googleapis.com/istio.networking.v1alpha3.ServiceEntry', \
             expected 'type.googleapis.com/istio.mcp.v1alpha1.Resource'"
        ) && msg.contains("exit status: 2"),
        "{msg}"
    );
    let answered = server.requests().iter().any(|r| r["response_nonce"] != "");
    assert!(!answered, "{}", server.log_dump());
    Ok(())
}
