//! Leader election over a Lease (crates/kube/src/leader.rs) against the in-test API server,
//! which refuses a replace carrying a stale `resourceVersion` with 409 as the API server does:
//! of two replicas exactly one leads; a lease another holder renews is left alone; when the
//! leader dies the other takes over once the lease has expired; and only the leader writes
//! analysis to status, trying again when the API server refused a write.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client;
use serde_json::json;
use sluice_e2e::fake_apiserver::FakeApiServer;
use sluice_kube::leader::{self, LeaseOptions};
use tokio::sync::watch;

/// Short timings, so a takeover happens within the test.
fn lease(identity: &str) -> LeaseOptions {
    LeaseOptions {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseOptions::new("istio-system", "sluice-control-status", identity)
    }
}

async fn wait_until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_dies() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let (a_tx, a) = watch::channel(false);
    let (b_tx, b) = watch::channel(false);
    let a_task = tokio::spawn(leader::run(client(&server).await, lease("replica-a"), a_tx));
    let b_task = tokio::spawn(leader::run(client(&server).await, lease("replica-b"), b_tx));

    wait_until("one replica leads", Duration::from_secs(5), || {
        *a.borrow() || *b.borrow()
    })
    .await;
    // Several renewal rounds: never both, and the lease names the leader.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!(*a.borrow() && *b.borrow()), "both replicas lead");
    }
    let (leader_task, follower, follower_name) = if *a.borrow() {
        (a_task, b.clone(), "replica-b")
    } else {
        (b_task, a.clone(), "replica-a")
    };
    let held = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "istio-system",
            "sluice-control-status",
        )
        .expect("the lease");
    let holder = held["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert_ne!(holder, follower_name, "{held}");
    assert_eq!(held["spec"]["leaseDurationSeconds"], 2, "{held}");

    // The leader dies without giving the lease up: the other replica leads once it expires.
    leader_task.abort();
    let died = Instant::now();
    wait_until(
        "the other replica takes over",
        Duration::from_secs(6),
        || *follower.borrow(),
    )
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(1500),
        "taken over after {:?}, before the lease could expire",
        died.elapsed()
    );
    let held = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "istio-system",
            "sluice-control-status",
        )
        .expect("the lease");
    assert_eq!(held["spec"]["holderIdentity"], follower_name, "{held}");
    assert_eq!(held["spec"]["leaseTransitions"], 1, "{held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_another_holder_renews_is_not_taken() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let renew = |server: &FakeApiServer| {
        server.apply(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "sluice-control-status", "namespace": "istio-system"},
            "spec": {"holderIdentity": "istiod-elsewhere", "leaseDurationSeconds": 2,
                     "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()}}),
        );
    };
    renew(&server);
    let (tx, leading) = watch::channel(false);
    let task = tokio::spawn(leader::run(client(&server).await, lease("replica-a"), tx));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        renew(&server);
        assert!(!*leading.borrow(), "took a lease that is being renewed");
    }
    // Renewals stop: it expires and is taken.
    wait_until("the expired lease taken", Duration::from_secs(6), || {
        *leading.borrow()
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_status() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    server.apply(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "orphan", "namespace": "default"},
        "spec": {"hosts": ["httpbin.org"], "gateways": ["missing-gateway"],
                 "http": [{"route": [{"destination": {"host": "httpbin.org"}}]}]}}),
    );
    // The config the control plane would publish: that VirtualService, read from the API.
    let text = r#"{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "orphan", "namespace": "default"},
        "spec": {"hosts": ["httpbin.org"], "gateways": ["missing-gateway"],
                 "http": [{"route": [{"destination": {"host": "httpbin.org"}}]}]}}"#;
    let loaded = sluice_api::decode_str(Path::new("kube:VirtualService/default/orphan"), text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let (configs_tx, configs) = watch::channel(Arc::new(Vec::new()));
    let (leading_tx, leading) = watch::channel(false);
    let writer = tokio::spawn(sluice_kube::status::run(
        client(&server).await,
        configs,
        leading,
    ));
    configs_tx.send_replace(Arc::new(loaded.resources));
    let patches = |server: &FakeApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH") && r.contains("/orphan/status"))
            .count()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        patches(&server),
        0,
        "a replica that does not lead wrote status"
    );

    // The API server refuses writes when this replica starts leading: the write is tried again
    // once it takes them, with no config change in between.
    // (500: the client itself retries 429, 503 and 504 a while, not this.)
    server.refuse_writes(Some(500));
    leading_tx.send_replace(true);
    wait_until("a refused attempt", Duration::from_secs(5), || {
        patches(&server) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        server
            .get(
                "networking.istio.io/v1",
                "VirtualService",
                "default",
                "orphan"
            )
            .expect("the VirtualService")["status"]
            .clone()
            .is_null(),
        "written while refused"
    );
    server.refuse_writes(None);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = server
            .get(
                "networking.istio.io/v1",
                "VirtualService",
                "default",
                "orphan",
            )
            .expect("the VirtualService")["status"]
            .clone();
        if status["validationMessages"][0]["type"]["code"] == "IST0101" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status not written after the refusal: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer.abort();
}
