//! The mesh root published in every namespace (ConfigMap istio-ca-root-cert), against the
//! in-test API server: only while leading; not in Kubernetes' own namespaces; a new namespace
//! gets it; an edited or deleted one is put back; a failed write is tried again.

mod common;

use std::time::{Duration, Instant};

use common::client;
use serde_json::{json, Value};
use sluice_e2e::fake_apiserver::FakeApiServer;
use tokio::sync::watch;

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The ConfigMap's `root-cert.pem` in `ns`, if there is one.
fn published(server: &FakeApiServer, ns: &str) -> Option<String> {
    let cm = server.get("v1", "ConfigMap", ns, "istio-ca-root-cert")?;
    cm["data"]["root-cert.pem"].as_str().map(str::to_string)
}

async fn wait_for(what: &str, server: &FakeApiServer, ns: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = published(server, ns);
        if got.as_deref() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {ns} has {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_the_root_in_every_namespace_and_keeps_it() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    for ns in ["default", "shop", "kube-system"] {
        server.apply(namespace(ns));
    }
    let (leading_tx, leading) = watch::channel(false);
    let task = tokio::spawn(sluice_kube::root_cert::run(
        client(&server).await,
        ROOT.to_string(),
        leading,
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        published(&server, "default"),
        None,
        "written while not leading"
    );

    leading_tx.send_replace(true);
    wait_for("published when leading", &server, "default", Some(ROOT)).await;
    wait_for("published when leading", &server, "shop", Some(ROOT)).await;
    assert_eq!(published(&server, "kube-system"), None);

    // A new namespace.
    server.apply(namespace("payments"));
    wait_for("a new namespace", &server, "payments", Some(ROOT)).await;
    // Edited: put back.
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "shop"},
        "data": {"root-cert.pem": "tampered"}}));
    wait_for("an edited one corrected", &server, "shop", Some(ROOT)).await;
    // Deleted: back again.
    assert!(server.delete("v1", "ConfigMap", "default", "istio-ca-root-cert"));
    wait_for("a deleted one recreated", &server, "default", Some(ROOT)).await;
    // The API server refuses ConfigMaps for a while when a namespace appears: published once
    // it takes them again, without another event.
    server.uninstall("configmaps");
    server.apply(namespace("late"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.install("configmaps");
    wait_for(
        "published after the API server recovered",
        &server,
        "late",
        Some(ROOT),
    )
    .await;
    task.abort();
}
