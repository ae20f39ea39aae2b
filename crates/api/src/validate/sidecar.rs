//! Sidecar (`ValidateSidecar`): the egress listeners sluice reads, and the outbound policy.

use std::collections::BTreeSet;

use crate::networking::Sidecar;

use super::common::workload_selector;
use super::names::{self, Protocol};
use super::Report;

pub(super) fn check(r: &mut Report<'_>, sc: &Sidecar) {
    if let Some(sel) = &sc.workload_selector {
        workload_selector(r, "spec.workloadSelector", &sel.labels, "sidecar");
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.error("spec", "sidecar: empty configuration provided");
        return;
    }

    let mut ports = BTreeSet::new();
    let mut catch_all_seen = false;
    for (i, egress) in sc.egress.iter().enumerate() {
        let base = format!("spec.egress[{i}]");
        match &egress.port {
            // The listener without a port catches everything the others do not, so it can only
            // come last, and only once.
            None if catch_all_seen => {
                r.error(
                    base.clone(),
                    "sidecar: egress can have only one listener with empty port",
                );
                continue;
            }
            None => {
                catch_all_seen = true;
                if i != sc.egress.len() - 1 {
                    r.error(
                        base.clone(),
                        "sidecar: the egress listener with empty port should be the last listener in the list",
                    );
                }
            }
            Some(port) => {
                let path = format!("{base}.port");
                if port.target_port.is_some_and(|t| t > 0) {
                    r.error(
                        format!("{path}.targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                if !port.name.is_empty() && !names::is_dns1123_label(&port.name) {
                    r.error(
                        format!("{path}.name"),
                        format!("invalid port name: {}", port.name),
                    );
                }
                if let Some(p) = port.protocol.as_deref().filter(|p| !p.is_empty()) {
                    if Protocol::parse(p).is_none() {
                        r.error(
                            format!("{path}.protocol"),
                            format!("unsupported protocol: {p}"),
                        );
                    }
                }
                let bind = egress.bind.as_deref().unwrap_or("");
                if port.number == 0 {
                    match bind.strip_prefix("unix://") {
                        Some(uds) => r.check(format!("{base}.bind"), names::unix_address(uds)),
                        None => r.error(
                            format!("{path}.number"),
                            "sidecar: ports with 0 value must have a unix domain socket bind address",
                        ),
                    }
                } else {
                    r.check(format!("{path}.number"), names::port(port.number));
                    if !bind.is_empty() {
                        r.check(format!("{base}.bind"), names::ip_address(bind));
                    }
                    if !ports.insert(port.number) {
                        r.error(path, "sidecar: ports on IP bound listeners must be unique");
                    }
                }
            }
        }
        if egress.hosts.is_empty() {
            r.error(
                format!("{base}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        for (j, host) in egress.hosts.iter().enumerate() {
            for e in names::namespace_slash_host(host, false) {
                r.error(format!("{base}.hosts[{j}]"), e);
            }
        }
        if egress.hosts.iter().any(|h| h == "*/*") && egress.hosts.len() > 1 {
            r.warn(
                format!("{base}.hosts"),
                "`*/*` host select all resources, no other hosts can be added",
            );
        }
    }

    if let Some(policy) = &sc.outbound_traffic_policy {
        let mode = policy.mode.as_deref().unwrap_or("REGISTRY_ONLY");
        if mode != "REGISTRY_ONLY" && mode != "ALLOW_ANY" {
            r.error(
                "spec.outboundTrafficPolicy.mode",
                format!("invalid outboundTrafficPolicy mode {mode}; expected REGISTRY_ONLY or ALLOW_ANY"),
            );
        } else if policy.egress_proxy.is_some() && mode != "ALLOW_ANY" {
            r.error(
                "spec.outboundTrafficPolicy.egressProxy",
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
            );
        }
    }
}
