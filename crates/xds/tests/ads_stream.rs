//! The ADS server and client against each other over a real gRPC connection on loopback:
//! subscriptions, ACKs, NACKs with their message, pushes of changed collections only, alias
//! type URLs, collections never published never sent, and reconnection to another replica.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_xds::client::{ClientConfig, Received};
use sluice_xds::server::{AdsServer, Published, PublishedCollection, ServerEvents};
use sluice_xds::{encode_resource, McpObject, Node};
use tokio::sync::{mpsc, watch};

const SE: &str = "networking.istio.io/v1/ServiceEntry";
const SE_OLD: &str = "networking.istio.io/v1alpha3/ServiceEntry";
const VS: &str = "networking.istio.io/v1/VirtualService";
const DR: &str = "networking.istio.io/v1/DestinationRule";

#[derive(Default)]
struct Recorded {
    rejected: Mutex<Vec<(String, String)>>,
    connections: Mutex<i64>,
}

impl ServerEvents for Recorded {
    fn connection(&self, _node: &str, connected: bool) {
        *self.connections.lock().unwrap() += if connected { 1 } else { -1 };
    }
    fn rejected(&self, _node: &str, type_url: &str, message: &str) {
        self.rejected
            .lock()
            .unwrap()
            .push((type_url.to_string(), message.to_string()));
    }
}

fn service_entry(host: &str) -> McpObject {
    McpObject {
        name: "default/ext".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        version: String::new(),
        spec: json!({"hosts": [host], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"}),
    }
}

fn published(version: &str, host: &str) -> Published {
    let mut collections = BTreeMap::new();
    let se = encode_resource(SE, &service_entry(host)).unwrap();
    collections.insert(
        SE.to_string(),
        PublishedCollection {
            version: version.into(),
            resources: Arc::new(vec![se]),
            ..PublishedCollection::default()
        },
    );
    collections.insert(
        VS.to_string(),
        PublishedCollection {
            version: "1".into(),
            resources: Arc::new(Vec::new()),
            ..PublishedCollection::default()
        },
    );
    // DR is never published: a client subscribed to it must get nothing.
    Published {
        collections,
        at: Some(std::time::Instant::now()),
        sidecars: None,
    }
}

async fn serve(
    config: watch::Receiver<Arc<Published>>,
    events: Arc<Recorded>,
    name: &str,
) -> (String, AdsServer, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ads = AdsServer::new(config, events, name);
    let service = ads.service(1 << 20);
    let incoming = sluice_xds::tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = sluice_xds::tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, ads, task)
}

fn client(servers: Vec<String>, collections: &[&str]) -> ClientConfig {
    ClientConfig {
        servers,
        node: Node {
            id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local".into(),
            ..Node::default()
        },
        collections: collections.iter().map(|c| c.to_string()).collect(),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        tls: None,
        delta: false,
    }
}

async fn next(rx: &mut mpsc::Receiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a response within 10 s")
        .expect("the client is running")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn subscribe_ack_nack_push_and_alias() {
    let (config_tx, config_rx) = watch::channel(Arc::new(published("1", "a.example")));
    let events = Arc::new(Recorded::default());
    let (addr, ads, _server) = serve(config_rx, events.clone(), "replica-1").await;
    let (applier, mut received) = mpsc::channel(16);
    let _client = tokio::spawn(sluice_xds::client::run(
        client(vec![addr], &[SE_OLD, VS, DR]),
        applier,
    ));

    // The alias is served the main collection's content, decoded.
    let se = next(&mut received).await;
    assert_eq!(se.type_url, SE_OLD);
    assert_eq!(se.version, "1");
    assert_eq!(se.objects.len(), 1);
    assert_eq!(se.objects[0].name, "default/ext");
    assert_eq!(se.objects[0].spec["hosts"], json!(["a.example"]));
    se.reply.send(Ok(())).unwrap();
    // The VirtualService collection is refused.
    let vs = next(&mut received).await;
    assert_eq!(vs.type_url, VS);
    vs.reply
        .send(Err(
            "VirtualService default/x: spec.http[0].timeout: bad".into()
        ))
        .unwrap();

    eventually("the ACK and the NACK reach the server", || {
        let c = ads.connections();
        c.len() == 1
            && c[0].types.get(SE_OLD).is_some_and(|t| t.acked == "1")
            && c[0].types.get(VS).is_some_and(|t| t.nacked.is_some())
    })
    .await;
    let status = &ads.connections()[0];
    assert_eq!(status.control_plane, "replica-1");
    assert!(status.node_id.starts_with("sidecar~"));
    assert_eq!(status.types[DR].sent, "", "never published, never sent");
    assert_eq!(
        events.rejected.lock().unwrap().as_slice(),
        &[(
            VS.to_string(),
            "VirtualService default/x: spec.http[0].timeout: bad".to_string()
        )]
    );
    assert_eq!(*events.connections.lock().unwrap(), 1);

    // A change to one collection pushes that collection only.
    config_tx.send_replace(Arc::new(published("2", "b.example")));
    let se = next(&mut received).await;
    assert_eq!((se.type_url.as_str(), se.version.as_str()), (SE_OLD, "2"));
    assert_eq!(se.objects[0].spec["hosts"], json!(["b.example"]));
    se.reply.send(Ok(())).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), received.recv())
            .await
            .is_err(),
        "unchanged collections are not pushed again"
    );
    eventually("version 2 ACKed", || {
        ads.connections()[0]
            .types
            .get(SE_OLD)
            .is_some_and(|t| t.acked == "2")
    })
    .await;
}

/// A replica on a runtime of its own, so that dropping it ends its connections as a killed
/// process would (aborting the accept loop alone leaves established streams running).
fn replica_on_own_runtime(
    config: watch::Receiver<Arc<Published>>,
    name: &'static str,
) -> (String, AdsServer, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (addr, ads, _task) = runtime.block_on(serve(config, Arc::new(Recorded::default()), name));
    (addr, ads, runtime)
}

#[test]
fn a_lost_replica_is_replaced_by_the_next_with_the_versions_held() {
    let (_tx_a, rx_a) = watch::channel(Arc::new(published("7", "a.example")));
    let (_tx_b, rx_b) = watch::channel(Arc::new(published("7", "a.example")));
    let (addr_a, ads_a, runtime_a) = replica_on_own_runtime(rx_a, "replica-a");
    let (addr_b, ads_b, runtime_b) = replica_on_own_runtime(rx_b, "replica-b");
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    client_runtime.block_on(async {
        let (applier, mut received) = mpsc::channel(16);
        let _client = tokio::spawn(sluice_xds::client::run(
            client(vec![addr_a, addr_b], &[SE]),
            applier,
        ));
        let se = next(&mut received).await;
        se.reply.send(Ok(())).unwrap();
        eventually("connected to a", || ads_a.connections().len() == 1).await;

        runtime_a.shutdown_background();
        // The client reconnects to b and resumes: b sends the collection again, the client
        // applies and ACKs it.
        let se = next(&mut received).await;
        assert_eq!(se.version, "7");
        se.reply.send(Ok(())).unwrap();
        eventually("connected to b and synced", || {
            let c = ads_b.connections();
            c.len() == 1 && c[0].types.get(SE).is_some_and(|t| t.acked == "7")
        })
        .await;
    });
    runtime_b.shutdown_background();
}

#[tokio::test]
async fn a_stream_without_a_node_is_refused() {
    use sluice_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use sluice_xds::discovery::DiscoveryRequest;
    let (_tx, rx) = watch::channel(Arc::new(published("1", "a.example")));
    let (addr, ads, _server) = serve(rx, Arc::new(Recorded::default()), "replica").await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let request = DiscoveryRequest {
        type_url: SE.into(),
        ..DiscoveryRequest::default()
    };
    let mut responses = client
        .stream_aggregated_resources(futures_util::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), sluice_xds::tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status}");
    assert!(ads.connections().is_empty());
}

fn node_in(namespace: &str) -> Node {
    use sluice_xds::envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    Node {
        id: format!("sidecar~10.0.0.1~app.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [(
                "NAMESPACE".to_string(),
                Value {
                    kind: Some(Kind::StringValue(namespace.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Node::default()
    }
}

/// Two ServiceEntries: one for everyone, one exported to namespace `a` only (its host varies);
/// and one Secret for namespace `a`, which no plaintext stream may receive.
fn scoped_config(version: &str, private_host: &str) -> Published {
    use sluice_xds::server::Audience;
    let public = encode_resource(SE, &service_entry("public.example")).unwrap();
    let mut private = service_entry(private_host);
    private.name = "a/private".into();
    let private = encode_resource(SE, &private).unwrap();
    let secret = McpObject {
        name: "a/creds".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        version: String::new(),
        spec: json!({"type": "Opaque", "data": {"token": "c2VjcmV0"}}),
    };
    let secret = encode_resource("core/v1/Secret", &secret).unwrap();
    let mut collections = BTreeMap::new();
    collections.insert(
        SE.to_string(),
        PublishedCollection {
            version: version.into(),
            resources: Arc::new(vec![public, private]),
            audiences: Arc::new(vec![
                Audience::Everyone,
                Audience::Namespaces(Arc::from(vec!["a".to_string()])),
            ]),
            ..PublishedCollection::default()
        },
    );
    collections.insert(
        "core/v1/Secret".to_string(),
        PublishedCollection {
            version: version.into(),
            resources: Arc::new(vec![secret]),
            audiences: Arc::new(vec![Audience::AuthenticatedIn("a".into())]),
            ..PublishedCollection::default()
        },
    );
    Published {
        collections,
        at: Some(std::time::Instant::now()),
        sidecars: None,
    }
}

#[tokio::test]
async fn scoping_withholds_what_a_namespace_may_not_see_and_skips_pushes_that_change_nothing() {
    let (config_tx, config_rx) = watch::channel(Arc::new(scoped_config("1", "v1.private")));
    let events = Arc::new(Recorded::default());
    let (addr, ads, _server) = serve(config_rx, events, "replica").await;
    let start = |namespace: &str| {
        let (applier, received) = mpsc::channel(16);
        let mut config = client(vec![addr.clone()], &[SE, "core/v1/Secret"]);
        config.node = node_in(namespace);
        tokio::spawn(sluice_xds::client::run(config, applier));
        received
    };
    let mut in_a = start("a");
    let mut in_b = start("b");
    let hosts = |r: &Received| -> Vec<String> {
        r.objects
            .iter()
            .map(|o| o.spec["hosts"][0].as_str().unwrap_or("").to_string())
            .collect()
    };
    for (rx, want) in [
        (&mut in_a, vec!["public.example", "v1.private"]),
        (&mut in_b, vec!["public.example"]),
    ] {
        for _ in 0..2 {
            let r = next(rx).await;
            if r.type_url == SE {
                assert_eq!(hosts(&r), want);
            } else {
                assert!(
                    r.objects.is_empty(),
                    "no Secret over plaintext: {:?}",
                    r.objects
                );
            }
            r.reply.send(Ok(())).unwrap();
        }
    }
    let namespaces: Vec<String> = ads
        .connections()
        .iter()
        .map(|c| c.namespace.clone())
        .collect();
    assert!(namespaces.contains(&"a".to_string()) && namespaces.contains(&"b".to_string()));

    // Only the resource namespace `a` sees changes: `a` gets version 2, `b` gets nothing.
    config_tx.send_replace(Arc::new(scoped_config("2", "v2.private")));
    let r = next(&mut in_a).await;
    assert_eq!((r.type_url.as_str(), r.version.as_str()), (SE, "2"));
    assert_eq!(hosts(&r), vec!["public.example", "v2.private"]);
    r.reply.send(Ok(())).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), in_b.recv())
            .await
            .is_err(),
        "nothing namespace b receives changed: no push"
    );
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_resumes_from_the_versions_held() {
    use sluice_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use sluice_xds::discovery::DeltaDiscoveryRequest;
    let named = |mut p: Published| {
        let se = p.collections.get_mut(SE).unwrap();
        se.names = Arc::new(vec!["default/ext".to_string()]);
        p
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(named(published("1", "a.example"))));
    let (addr, _ads, _server) = serve(config_rx, Arc::new(Recorded::default()), "replica").await;

    let open = |initial: std::collections::HashMap<String, String>| {
        let addr = addr.clone();
        async move {
            let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
            tx.send(DeltaDiscoveryRequest {
                node: Some(node_in("default")),
                type_url: SE.into(),
                initial_resource_versions: initial,
                ..DeltaDiscoveryRequest::default()
            })
            .await
            .unwrap();
            let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            });
            let responses = client
                .delta_aggregated_resources(requests)
                .await
                .unwrap()
                .into_inner();
            (tx, responses)
        }
    };
    let (tx, mut responses) = open(Default::default()).await;
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.resources[0].name, "default/ext");
    let held_version = first.resources[0].version.clone();
    tx.send(DeltaDiscoveryRequest {
        type_url: SE.into(),
        response_nonce: first.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();

    // A change: the one resource travels again, with a new version.
    config_tx.send_replace(Arc::new(named(published("2", "b.example"))));
    let second = responses.message().await.unwrap().unwrap();
    assert_eq!(second.system_version_info, "2");
    assert_eq!(second.resources.len(), 1);
    assert_ne!(second.resources[0].version, held_version);
    assert!(second.removed_resources.is_empty());
    tx.send(DeltaDiscoveryRequest {
        type_url: SE.into(),
        response_nonce: second.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();

    // The resource goes away: only its name travels.
    let mut gone = published("3", "b.example");
    gone.collections.insert(
        SE.to_string(),
        PublishedCollection {
            version: "3".into(),
            ..PublishedCollection::default()
        },
    );
    config_tx.send_replace(Arc::new(gone));
    let third = responses.message().await.unwrap().unwrap();
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, vec!["default/ext".to_string()]);

    // A new stream that already holds the current version gets an empty first answer.
    config_tx.send_replace(Arc::new(named(published("4", "b.example"))));
    let current = second.resources[0].version.clone();
    let (_tx2, mut responses2) =
        open([("default/ext".to_string(), current)].into_iter().collect()).await;
    let resumed = responses2.message().await.unwrap().unwrap();
    assert!(
        resumed.resources.is_empty() && resumed.removed_resources.is_empty(),
        "nothing changed since what it holds: {resumed:?}"
    );
}

#[tokio::test]
async fn the_delta_client_hands_the_proxy_whole_collections() {
    let named = |mut p: Published, names: Vec<&str>| {
        let se = p.collections.get_mut(SE).unwrap();
        se.names = Arc::new(names.into_iter().map(str::to_string).collect());
        p
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(named(
        published("1", "a.example"),
        vec!["default/ext"],
    )));
    let (addr, ads, _server) = serve(config_rx, Arc::new(Recorded::default()), "replica").await;
    let (applier, mut received) = mpsc::channel(16);
    let mut config = client(vec![addr], &[SE, VS]);
    config.delta = true;
    let _client = tokio::spawn(sluice_xds::client::run(config, applier));
    for _ in 0..2 {
        let r = next(&mut received).await;
        if r.type_url == SE {
            assert_eq!(r.objects.len(), 1);
        }
        r.reply.send(Ok(())).unwrap();
    }
    // Refused: the proxy keeps what it had, the server knows it.
    config_tx.send_replace(Arc::new(named(
        published("2", "b.example"),
        vec!["default/ext"],
    )));
    let r = next(&mut received).await;
    assert_eq!(r.objects[0].spec["hosts"][0], "b.example");
    r.reply
        .send(Err("ServiceEntry default/ext: spec.hosts[0]: no".into()))
        .unwrap();
    eventually("the NACK reaches the server", || {
        ads.connections()
            .first()
            .and_then(|c| c.types.get(SE).cloned())
            .is_some_and(|t| t.nacked.is_some())
    })
    .await;
    // The next change is computed from what the proxy kept, and arrives whole.
    config_tx.send_replace(Arc::new(named(
        published("3", "c.example"),
        vec!["default/ext"],
    )));
    let r = next(&mut received).await;
    assert_eq!(r.version, "3");
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].spec["hosts"][0], "c.example");
    r.reply.send(Ok(())).unwrap();
}
