//! Envoy's `/clusters` output (text and JSON) for the admin API: each cluster's circuit-breaker
//! thresholds and its endpoints' load, errors, weight and health.

use sluice_model::registry::EndpointAddress;
use sluice_model::Snapshot;

use super::Balancers;

/// Envoy's `/clusters` text for the clusters of `snap`, with the runtime state of `balancers`.
pub fn clusters_text(snap: &Snapshot, balancers: &Balancers) -> String {
    use std::fmt::Write as _;
    balancers.sync(snap);
    let mut out = String::new();
    for name in [
        sluice_model::PASSTHROUGH_CLUSTER,
        sluice_model::BLACKHOLE_CLUSTER,
    ] {
        let _ = writeln!(out, "{name}::added_via_api::false");
    }
    for c in snap.clusters.values() {
        let name = &c.name;
        let rt = balancers.get(name);
        let l = &c.limits;
        let _ = writeln!(out, "{name}::added_via_api::true");
        for (what, v) in [
            ("max_connections", l.max_connections),
            ("max_pending_requests", l.max_pending_requests),
            ("max_requests", l.max_requests),
            ("max_retries", l.max_retries),
        ] {
            let _ = writeln!(out, "{name}::default_priority::{what}::{v}");
        }
        if let Some(rt) = &rt {
            for ep in rt.endpoints() {
                let host = ep.host();
                let _ = writeln!(out, "{name}::{host}::cx_active::{}", ep.cx_active());
                let _ = writeln!(out, "{name}::{host}::rq_active::{}", ep.rq_active());
                let _ = writeln!(out, "{name}::{host}::rq_error::{}", ep.rq_error());
                let _ = writeln!(out, "{name}::{host}::rq_total::{}", ep.rq_total());
                let flags = if rt.is_ejected(&ep) {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{host}::health_flags::{flags}");
                let _ = writeln!(out, "{name}::{host}::weight::{}", ep.weight());
            }
        }
    }
    out
}

/// Envoy's `/clusters?format=json` for the clusters of `snap`.
pub fn clusters_json(snap: &Snapshot, balancers: &Balancers) -> serde_json::Value {
    balancers.sync(snap);
    let statuses: Vec<_> = snap
        .clusters
        .values()
        .map(|c| {
            let l = &c.limits;
            let hosts: Vec<_> = balancers
                .get(&c.name)
                .map(|rt| {
                    rt.endpoints()
                        .iter()
                        .map(|ep| {
                            let address = match &ep.address {
                                EndpointAddress::Ip(ip) => ip.to_string(),
                                EndpointAddress::Name(n) => n.to_string(),
                            };
                            let mut health = serde_json::json!({ "eds_health_status": "HEALTHY" });
                            if rt.is_ejected(ep) {
                                health["failed_outlier_check"] = true.into();
                            }
                            serde_json::json!({
                                "address": { "socket_address": {
                                    "address": address, "port_value": ep.port } },
                                "stats": [
                                    { "name": "cx_active", "type": "GAUGE", "value": ep.cx_active() },
                                    { "name": "rq_active", "type": "GAUGE", "value": ep.rq_active() },
                                    { "name": "rq_error", "value": ep.rq_error() },
                                    { "name": "rq_total", "value": ep.rq_total() },
                                ],
                                "health_status": health,
                                "weight": ep.weight(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "name": c.name.as_ref(),
                "added_via_api": true,
                "circuit_breakers": { "thresholds": [{
                    "max_connections": l.max_connections,
                    "max_pending_requests": l.max_pending_requests,
                    "max_requests": l.max_requests,
                    "max_retries": l.max_retries,
                }]},
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}
