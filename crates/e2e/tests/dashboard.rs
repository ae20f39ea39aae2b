//! End-to-end proof of `sluice dashboard`: the tutorial's mesh ([`MeshEnv`]: client → customer
//! → preference → recommendation-v3 → worldclockapi.com, a sidecar in every pod, REGISTRY_ONLY),
//! a real Prometheus (Debian's `prometheus`) scraping every sidecar's `:15090/stats/prometheus`
//! once a second from the hub namespace, `sluice dashboard` next to it, and headless Chromium
//! loading the page: the nodes and edges must be in the page's DOM, first with the clock call
//! blocked (BlackHoleCluster), then with a ServiceEntry (worldclockapi.com as an external node).
//!
//! The screenshot is kept as `target/e2e-artifacts/dashboard.png`.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use sluice_e2e::config::{mesh_configmap, SE_WORLDCLOCK_PORT80};
use sluice_e2e::dashboard::{
    artifacts_dir, chromium_bin, data_values, edge, element_with, node_ids, prometheus_bin,
    Chromium, DashboardServer, PrometheusServer, ScrapeTarget,
};
use sluice_e2e::mesh::{CLOCK_HOST, CLOCK_URL, MESH_FILE};
use sluice_e2e::{eventually, MeshEnv, PodSpec};

const CUSTOMER: &str = "http://customer:8080/";
const T: &str = "tutorial";

fn svc(app: &str) -> String {
    format!("service:{app}.{T}.svc.cluster.local")
}

fn wl(name: &str) -> String {
    format!("workload:{T}/{name}")
}

fn edge_id(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// `rounds` bursts of `n` chain calls from the client, `gap` apart, so that Prometheus (1 s
/// scrapes) sees the counters grow over several scrapes: rates above zero.
fn traffic(mesh: &MeshEnv, rounds: usize, n: usize, gap: Duration) -> Vec<u16> {
    let client = mesh.pod("client");
    let mut codes = Vec::new();
    for i in 0..rounds {
        if i > 0 {
            std::thread::sleep(gap);
        }
        codes.extend(client.get_many(CUSTOMER, n).into_iter().map(|(c, _)| c));
    }
    codes
}

#[test]
fn dashboard_draws_the_mesh_from_prometheus() {
    let started = Instant::now();
    // The outside programs first: a missing one fails here, naming its package.
    prometheus_bin();
    chromium_bin();

    let mut mesh = MeshEnv::new("dashboard_graph");
    // REGISTRY_ONLY from the start: recommendation's clock call goes to BlackHoleCluster.
    mesh.config
        .write(MESH_FILE, &mesh_configmap("REGISTRY_ONLY", ""));
    mesh.add_pods(vec![
        PodSpec::client(),
        PodSpec::customer(),
        PodSpec::preference(),
        PodSpec::recommendation("v3").env("CLOCK_URL", CLOCK_URL),
    ]);
    let hub = mesh.addrs.dns;
    let targets: Vec<ScrapeTarget> = mesh
        .pods()
        .iter()
        .map(|p| ScrapeTarget {
            pod: p.name().to_string(),
            addr: SocketAddr::new(p.ip.into(), 15090),
        })
        .collect();
    let prom = PrometheusServer::start(
        &mesh.hub,
        mesh.dir(),
        &mesh.logs,
        SocketAddrV4::new(hub, 9090),
        &targets,
    );
    prom.wait_targets_up(targets.len(), Duration::from_secs(15));
    let dash = DashboardServer::start(
        &mesh.hub,
        mesh.dir(),
        &mesh.logs,
        &prom.url(),
        SocketAddr::new(hub.into(), 20001),
        "1s",
    );
    let chromium = Chromium::new(&mesh.hub, mesh.dir());
    eprintln!(
        "[dashboard] mesh, Prometheus {} and dashboard {} up after {:.1}s",
        prom.url(),
        dash.url(),
        started.elapsed().as_secs_f64()
    );

    // --- 1. the chain, with the clock call blocked ------------------------------------------
    let codes = traffic(&mesh, 5, 4, Duration::from_millis(400));
    assert!(
        codes.iter().all(|c| *c == 503),
        "REGISTRY_ONLY: the chain fails at the clock call: {codes:?}"
    );
    let blackhole = "blackhole:BlackHoleCluster";
    let first_edges = [
        edge_id(&wl("client-v1"), &svc("customer")),
        edge_id(&svc("customer"), &wl("customer-v1")),
        edge_id(&wl("customer-v1"), &svc("preference")),
        edge_id(&svc("preference"), &wl("preference-v1")),
        edge_id(&wl("preference-v1"), &svc("recommendation")),
        edge_id(&svc("recommendation"), &wl("recommendation-v3")),
        edge_id(&wl("recommendation-v3"), blackhole),
    ];
    let graph = eventually(
        "/api/graph shows the chain and BlackHoleCluster with traffic",
        Duration::from_secs(20),
        || {
            let g = dash.graph("1m")?;
            for id in &first_edges {
                let e = edge(&g, id).ok_or_else(|| format!("no edge {id} yet: {g}"))?;
                if e["rps"].as_f64().unwrap_or(0.0) <= 0.0 {
                    return Err(format!("edge {id} has no rate yet: {e}"));
                }
            }
            Ok(g)
        },
    );
    // The API's view: errors and latency of the hops.
    let e = edge(&graph, &edge_id(&wl("recommendation-v3"), blackhole)).unwrap();
    assert_eq!(e["error_rate"], 100.0, "blocked calls are 502s: {e}");
    let e = edge(&graph, &edge_id(&wl("client-v1"), &svc("customer"))).unwrap();
    assert_eq!(e["error_rate"], 100.0, "{e}");
    assert_eq!(e["protocol"], "http");
    assert!(e["p99_ms"].as_f64().is_some(), "p99 from the buckets: {e}");
    let ids = node_ids(&graph);
    assert!(
        !ids.iter().any(|n| n.starts_with("external:")),
        "nothing external yet: {ids:?}"
    );
    // The blocked panel needs sluice_egress_blocked_total from the sidecar.
    let has_blocked_counter = mesh
        .pod("recommendation-v3")
        .sidecar()
        .metrics()
        .iter()
        .any(|s| s.name == "sluice_egress_blocked_total");
    if has_blocked_counter {
        eventually(
            "the blocked panel lists worldclockapi.com",
            Duration::from_secs(10),
            || {
                let g = dash.graph("1m")?;
                let b = g["blocked"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| b["host"] == CLOCK_HOST)
                    .cloned()
                    .ok_or_else(|| format!("not blocked yet: {}", g["blocked"]))?;
                Ok(b)
            },
        );
    } else {
        eprintln!(
            "[dashboard] NOTE: the sidecar exposes no sluice_egress_blocked_total yet; the blocked \
             panel is only checked for BlackHoleCluster"
        );
    }

    let url = dash.url();
    let dom = chromium.dump_dom(&url, 3000);
    let nodes = data_values(&dom, "node");
    for id in [
        wl("client-v1"),
        wl("customer-v1"),
        wl("preference-v1"),
        wl("recommendation-v3"),
        svc("customer"),
        svc("preference"),
        svc("recommendation"),
        blackhole.to_string(),
    ] {
        assert!(nodes.contains(&id), "node {id} not drawn; nodes: {nodes:?}");
    }
    let edges = data_values(&dom, "edge");
    for id in &first_edges {
        assert!(edges.contains(id), "edge {id} not drawn; edges: {edges:?}");
    }
    let e = element_with(&dom, "edge", &first_edges[2]).unwrap();
    assert!(e.contains("rps · 100% err"), "edge label: {e}");
    assert!(
        element_with(&dom, "node", blackhole)
            .unwrap()
            .contains("data-kind=\"blackhole\""),
        "BlackHoleCluster drawn as such"
    );
    if has_blocked_counter {
        let hosts = data_values(&dom, "blocked-host");
        assert!(
            hosts.iter().any(|h| h == CLOCK_HOST),
            "blocked panel: {hosts:?}"
        );
        let item = element_with(&dom, "blocked-host", CLOCK_HOST).unwrap();
        assert!(item.contains("data-ports=\"80/http\""), "{item}");
        assert!(
            dom.contains("kind: ServiceEntry") && dom.contains("- number: 80"),
            "suggested ServiceEntry"
        );
    }

    // --- 2. a ServiceEntry for the clock: an external node ------------------------------------
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT80);
    let client = mesh.pod("client");
    eventually(
        "the chain works with the ServiceEntry",
        Duration::from_secs(10),
        || {
            let r = client.get(CUSTOMER);
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{r}"))
            }
        },
    );
    let codes = traffic(&mesh, 5, 4, Duration::from_millis(400));
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let external = format!("external:{CLOCK_HOST}");
    let to_external = edge_id(&wl("recommendation-v3"), &external);
    eventually(
        "/api/graph shows worldclockapi.com with traffic",
        Duration::from_secs(20),
        || {
            let g = dash.graph("1m")?;
            let e = edge(&g, &to_external).ok_or_else(|| format!("no edge yet: {g}"))?;
            if e["rps"].as_f64().unwrap_or(0.0) > 0.0 {
                Ok(())
            } else {
                Err(format!("no rate yet: {e}"))
            }
        },
    );
    // A page that refreshes (every 1 s; 3.5 s of virtual time) and draws the external host.
    let dom = chromium.dump_dom(&url, 3500);
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refreshes >= 2, "the page reloads the graph: {refreshes}");
    let nodes = data_values(&dom, "node");
    assert!(nodes.contains(&external), "{external} not drawn: {nodes:?}");
    assert!(
        element_with(&dom, "node", &external)
            .unwrap()
            .contains("data-kind=\"external\""),
        "a ServiceEntry host is an external node"
    );
    let edges = data_values(&dom, "edge");
    assert!(
        edges.contains(&to_external),
        "edge {to_external} not drawn: {edges:?}"
    );
    let e = element_with(&dom, "edge", &to_external).unwrap();
    assert!(e.contains("data-protocol=\"http\""), "{e}");
    assert!(e.contains(" rps · "), "{e}");

    let png = artifacts_dir().join("dashboard.png");
    chromium.screenshot(&url, &png, (1400, 900), 2500);
    eprintln!("[dashboard] screenshot: {}", png.display());
    println!("screenshot: {}", png.display());
    eprintln!(
        "[dashboard] done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
