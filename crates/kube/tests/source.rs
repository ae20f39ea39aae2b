//! `sluice control --kube`'s source against an API server that follows the list/watch
//! protocol (crates/e2e/src/fake_apiserver.rs), with kube-rs as the client: the first lists
//! (paginated) become complete lists for the store; changes while watching arrive as they
//! happen; a cut watch resumes from where it was without listing again; after the history is
//! compacted (410 Gone) the source lists again and what was deleted meanwhile goes away.
//! EndpointSlices become one Endpoints per Service; ready pods become WorkloadEntries; only the
//! Secrets a Gateway names are passed on; only the `istio` ConfigMap is read; Telemetry and
//! Kubernetes Ingress are read as well.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::client;
use serde_json::{json, Value};
use sluice_e2e::fake_apiserver::FakeApiServer;
use sluice_kube::source::{self, KubeOptions};
use sluice_proxy::store::SourceUpdate;

/// What the store would hold: path → text, and the prefixes listed once.
#[derive(Default)]
struct Held {
    objects: BTreeMap<String, String>,
    listed: Vec<String>,
}

impl Held {
    fn take(&mut self, update: SourceUpdate) {
        match update {
            SourceUpdate::Listed { prefix, objects } => {
                self.objects.retain(|p, _| !p.starts_with(&prefix));
                self.objects.extend(objects);
                self.listed.push(prefix);
            }
            SourceUpdate::Applied { path, text } => {
                self.objects.insert(path, text);
            }
            SourceUpdate::Deleted { path } => {
                self.objects.remove(&path);
            }
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.objects
            .get(path)
            .map(|t| serde_json::from_str(t).expect("JSON documents"))
    }
}

/// A Service as `kubectl get service -o json` shows it.
fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "service": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}"},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "v1", "time": "2026-11-30T10:12:44Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}}}]},
        "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "sessionAffinity": "None", "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
        "status": {"loadBalancer": {}}})
}

/// An EndpointSlice as the EndpointSlice controller writes it.
fn slice(ns: &str, name: &str, svc: &str, ips: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|(ip, ready)| {
            json!({"addresses": [ip], "nodeName": "node-1",
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{ip}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "generateName": format!("{svc}-"),
            "labels": {"kubernetes.io/service-name": svc,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc,
                                 "uid": "6a1c3b1e", "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn pod(ns: &str, name: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "reviews", "version": "v3"}},
        "spec": {"serviceAccountName": "bookinfo-reviews", "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn virtual_service(ns: &str, name: &str, timeout: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": ["httpbin.org"], "http": [{"timeout": timeout, "route": [{"destination": {"host": "httpbin.org"}}]}]}})
}

/// Applies what arrives until `check` holds (10 s at most).
fn until(
    rx: &std::sync::mpsc::Receiver<SourceUpdate>,
    held: &mut Held,
    what: &str,
    check: impl Fn(&Held) -> bool,
) {
    until_within(rx, held, what, Duration::from_secs(10), check)
}

fn until_within(
    rx: &std::sync::mpsc::Receiver<SourceUpdate>,
    held: &mut Held,
    what: &str,
    within: Duration,
    check: impl Fn(&Held) -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !check(held) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(update) => held.take(update),
            Err(_) => panic!(
                "{what}: not seen within {within:?}; held {:#?}",
                held.objects.keys().collect::<Vec<_>>()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_listed_then_followed_through_cuts_and_expiry() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    // 1,200 Services: more than a page (kube-rs lists 500 at a time).
    for i in 0..1200 {
        server.apply(service("shop", &format!("svc-{i:04}")));
    }
    server.apply(slice(
        "shop",
        "svc-0000-a",
        "svc-0000",
        &[("10.1.0.1", true), ("10.1.0.2", false)],
    ));
    server.apply(slice(
        "shop",
        "svc-0000-b",
        "svc-0000",
        &[("10.1.0.3", true)],
    ));
    server.apply(pod("shop", "reviews-v3-1", "10.1.0.1", true));
    server.apply(pod("shop", "reviews-v3-2", "10.1.0.2", false));
    server.apply(virtual_service("shop", "httpbin", "3s"));
    server.apply(json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "web-cert"}}]}}));
    for name in ["web-cert", "unrelated"] {
        server.apply(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "istio-system"},
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        );
    }
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}}));
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "other", "namespace": "istio-system"}, "data": {"x": "y"}}));
    server.apply(json!({"apiVersion": "telemetry.istio.io/v1alpha1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}]}}));
    server.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "istio"}, "spec": {"controller": "istio.io/ingress-controller"}}),
    );
    server.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ingressClassName": "istio", "rules": [{"host": "shop.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc-0000", "port": {"number": 80}}}}]}}]},
        "status": {"loadBalancer": {}}}));

    let (tx, rx) = std::sync::mpsc::channel();
    let source = tokio::spawn(source::run(
        client(&server).await,
        KubeOptions::default(),
        tx,
    ));
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let mut held = Held::default();
    let wait = |held: &mut Held, what: &str, check: &dyn Fn(&Held) -> bool| {
        let rx = rx.clone();
        tokio::task::block_in_place(|| until(&rx.lock().unwrap(), held, what, check));
    };

    // Every kind listed once: what the store waits for before it is ready.
    let prefixes = source::prefixes();
    wait(&mut held, "every kind listed", &|h| {
        prefixes.iter().all(|p| h.listed.contains(p))
    });
    let services = held
        .objects
        .keys()
        .filter(|p| p.starts_with("kube:Service/"))
        .count();
    assert_eq!(services, 1200, "every page of the Services");
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/services") && r.contains("continue=")),
        "the Services were listed in pages: {requests:?}"
    );
    // Slices → one Endpoints with the ready addresses of both.
    let endpoints = held
        .get("kube:Endpoints/shop/svc-0000")
        .expect("Endpoints for svc-0000");
    let ips: Vec<&str> = endpoints["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["addresses"].as_array().unwrap())
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.1.0.1", "10.1.0.3"], "{endpoints}");
    // Ready pods are workloads; an unready one is not.
    let workload = held
        .get("kube:Pod/shop/reviews-v3-1")
        .expect("the ready pod");
    assert_eq!(workload["kind"], "WorkloadEntry");
    assert_eq!(workload["spec"]["address"], "10.1.0.1");
    assert_eq!(workload["spec"]["labels"]["version"], "v3");
    assert_eq!(workload["spec"]["serviceAccount"], "bookinfo-reviews");
    assert!(held.get("kube:Pod/shop/reviews-v3-2").is_none());
    // A v1alpha3 object is served as the API server stores it; `status` is not config.
    let vs = held.get("kube:VirtualService/shop/httpbin").unwrap();
    assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
    assert_eq!(vs["spec"]["http"][0]["timeout"], "3s");
    assert!(held
        .get("kube:Service/shop/svc-0001")
        .unwrap()
        .get("status")
        .is_none());
    // Only the Secret a Gateway names; only the `istio` ConfigMap.
    assert!(held.get("kube:Secret/istio-system/web-cert").is_some());
    assert!(held.get("kube:Secret/istio-system/unrelated").is_none());
    assert!(held.get("kube:ConfigMap/istio-system/istio").is_some());
    assert!(held.get("kube:ConfigMap/istio-system/other").is_none());
    // Telemetry, Ingress and the cluster-scoped IngressClass.
    let telemetry = held
        .get("kube:Telemetry/istio-system/mesh-default")
        .unwrap();
    assert_eq!(telemetry["apiVersion"], "telemetry.istio.io/v1");
    assert_eq!(
        telemetry["spec"]["accessLogging"][0]["filter"]["expression"],
        "response.code >= 400"
    );
    let ingress = held.get("kube:Ingress/shop/web").unwrap();
    assert_eq!(ingress["spec"]["rules"][0]["host"], "shop.example.com");
    assert!(ingress.get("status").is_none());
    let class = held.get("kube:IngressClass//istio").unwrap();
    assert_eq!(class["spec"]["controller"], "istio.io/ingress-controller");
    assert!(class["metadata"].get("namespace").is_none());

    // Changes while watching.
    server.apply(virtual_service("shop", "httpbin", "1s"));
    server.delete("v1", "Service", "shop", "svc-1199");
    server.apply(pod("shop", "reviews-v3-2", "10.1.0.2", true));
    server.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "svc-0000-b");
    wait(&mut held, "the changes", &|h| {
        h.get("kube:VirtualService/shop/httpbin")
            .is_some_and(|v| v["spec"]["http"][0]["timeout"] == "1s")
            && h.get("kube:Service/shop/svc-1199").is_none()
            && h.get("kube:Pod/shop/reviews-v3-2").is_some()
            && h.get("kube:Endpoints/shop/svc-0000")
                .is_some_and(|e| !e.to_string().contains("10.1.0.3"))
    });
    // The Gateway now names the other Secret: it comes, the first goes.
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "unrelated"}}]}}));
    wait(&mut held, "the Secret the Gateway names now", &|h| {
        h.get("kube:Secret/istio-system/unrelated").is_some()
            && h.get("kube:Secret/istio-system/web-cert").is_none()
    });

    // Watches cut: they resume from their last version, without listing again.
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=") && r.contains("virtualservices"))
        .count();
    server.cut_watches();
    server.apply(virtual_service("shop", "httpbin", "2s"));
    wait(
        &mut held,
        "a change made while the watches were cut",
        &|h| {
            h.get("kube:VirtualService/shop/httpbin")
                .is_some_and(|v| v["spec"]["http"][0]["timeout"] == "2s")
        },
    );
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=") && r.contains("virtualservices"))
        .count();
    assert_eq!(
        lists_before, lists_after,
        "a cut watch resumes without a new list"
    );

    // History compacted, then cut: the watch gets 410 Gone, lists again, and what was deleted
    // while it was away is gone (no DELETED event ever reached it).
    server.hold_watches();
    server.cut_watches();
    server.delete(
        "networking.istio.io/v1",
        "VirtualService",
        "shop",
        "httpbin",
    );
    server.apply(virtual_service("shop", "added-later", "4s"));
    server.compact();
    server.release_watches();
    wait(&mut held, "the new list after 410 Gone", &|h| {
        h.get("kube:VirtualService/shop/httpbin").is_none()
            && h.get("kube:VirtualService/shop/added-later").is_some()
    });
    let lists_after_expiry = server
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=") && r.contains("virtualservices"))
        .count();
    assert!(
        lists_after_expiry > lists_after,
        "410 Gone made the source list again"
    );
    source.abort();
}

/// A kind whose CRD is not installed is served as empty, so the control plane becomes ready
/// (istiod's delayed informers); once the CRD is installed its objects arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_without_its_crd_counts_as_empty_until_the_crd_is_installed() {
    let server = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    server.uninstall("telemetries");
    server.apply(virtual_service("shop", "httpbin", "3s"));
    let (tx, rx) = std::sync::mpsc::channel();
    let source = tokio::spawn(source::run(
        client(&server).await,
        KubeOptions::default(),
        tx,
    ));
    let mut held = Held::default();
    let prefixes = source::prefixes();
    tokio::task::block_in_place(|| {
        until(&rx, &mut held, "every kind listed", |h| {
            prefixes.iter().all(|p| h.listed.contains(p))
        })
    });
    assert!(held.get("kube:VirtualService/shop/httpbin").is_some());
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("/apis/telemetry.istio.io/v1/telemetries")),
        "the Telemetry list was asked for"
    );

    server.install("telemetries");
    server.apply(
        json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "logs", "namespace": "shop"},
        "spec": {"accessLogging": [{"disabled": true}]}}),
    );
    // The watcher retries a failed list with backoff (0.8 s, doubling).
    tokio::task::block_in_place(|| {
        until_within(
            &rx,
            &mut held,
            "the Telemetry after its CRD was installed",
            Duration::from_secs(40),
            |h| h.get("kube:Telemetry/shop/logs").is_some(),
        )
    });
    source.abort();
}
