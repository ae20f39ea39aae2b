//! ServiceEntry and WorkloadEntry (`ValidateServiceEntry`, `validateWorkloadEntry`).

use std::collections::BTreeSet;

use crate::networking::{ServiceEntry, WorkloadEntry};

use super::common::{export_to, workload_selector};
use super::names::{self, is_dns1123_label, is_ip, Protocol};
use super::Report;

const RESOLUTIONS: [&str; 5] = ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"];
const LOCATIONS: [&str; 2] = ["MESH_EXTERNAL", "MESH_INTERNAL"];

/// Most host × port pairs in one ServiceEntry. Every pair is a service, and a cluster in every
/// proxy that sees it (Istio has no bound; 3,000 hosts × 3,000 ports made nine million clusters
/// and gigabytes per proxy). Real entries list tens of hosts with a few ports each.
pub const MAX_HOST_PORTS: usize = 16_384;

pub(super) fn check(r: &mut Report<'_>, se: &ServiceEntry) {
    if let Some(sel) = &se.workload_selector {
        workload_selector(r, "spec.workloadSelector", &sel.labels, "service entry");
        if !se.endpoints.is_empty() {
            r.error(
                "spec.endpoints",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }

    if se.hosts.is_empty() {
        r.error("spec.hosts", "service entry must have at least one host");
    }
    let services = se.hosts.len().saturating_mul(se.ports.len().max(1));
    if services > MAX_HOST_PORTS {
        r.error(
            "spec.ports",
            format!(
                "{} hosts × {} ports make {services} services, each with its own clusters in \
                 every proxy; at most {MAX_HOST_PORTS} are allowed in one ServiceEntry: split it",
                se.hosts.len(),
                se.ports.len()
            ),
        );
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(path, format!("invalid host {host}"));
        } else {
            r.check(path.clone(), names::wildcard_domain(host));
            if let Err(w) = names::partial_wildcard(host) {
                r.warn(path, w);
            }
        }
    }

    let resolution = se.resolution.as_deref().unwrap_or("NONE");
    let resolution_known = RESOLUTIONS.contains(&resolution);
    if !resolution_known {
        r.error(
            "spec.resolution",
            format!(
                "unsupported resolution type {resolution}; expected one of {}",
                RESOLUTIONS.join(", ")
            ),
        );
    }
    if let Some(location) = se.location.as_deref() {
        if !LOCATIONS.contains(&location) {
            r.error(
                "spec.location",
                format!("unsupported location {location}; expected MESH_EXTERNAL or MESH_INTERNAL"),
            );
        }
    }

    let mut cidr = false;
    for (i, address) in se.addresses.iter().enumerate() {
        cidr |= address.contains('/');
        r.check(format!("spec.addresses[{i}]"), names::ip_subnet(address));
    }
    if cidr && resolution != "NONE" && resolution != "STATIC" {
        r.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        if port.name.is_empty() {
            r.error(format!("{base}.name"), "port name is required");
        } else if !is_dns1123_label(&port.name) {
            r.error(
                format!("{base}.name"),
                format!("invalid port name: {}", port.name),
            );
        }
        if !port_names.insert(port.name.as_str()) {
            r.error(
                format!("{base}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            r.error(
                format!("{base}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        r.check(format!("{base}.number"), names::port(port.number));
        if let Some(target) = port.target_port.filter(|t| *t != 0) {
            r.check(format!("{base}.targetPort"), names::port(target));
            if resolution == "NONE" {
                r.warn(
                    format!("{base}.targetPort"),
                    "targetPort has no effect when resolution mode is NONE",
                );
            }
        }
        let protocol = port.protocol.as_deref().unwrap_or("");
        if !protocol.is_empty() && Protocol::parse(protocol).is_none() {
            r.error(
                format!("{base}.protocol"),
                format!("unsupported protocol: {protocol}"),
            );
        }
        // Without an address, a TCP port can only be told apart by port number: every such
        // service on the port collides (the listener is 0.0.0.0:<port>).
        if se.addresses.is_empty() && (protocol.is_empty() || protocol.eq_ignore_ascii_case("TCP"))
        {
            r.warn(
                base,
                "addresses are required for ports serving TCP (or unset) protocol when IP \
                 Autoallocation is not enabled",
            );
        }
    }

    if resolution_known {
        resolution_rules(r, se, resolution, &port_names);
    }

    // Plain TCP has no Host header or SNI to tell several hosts apart, unless the hosts are
    // ignored altogether (NONE forwards to the original destination).
    if resolution != "NONE" && se.hosts.len() > 1 {
        if let Some(i) = se.ports.iter().position(|p| {
            let p = p.protocol.as_deref().and_then(Protocol::parse);
            !p.is_some_and(|p| p.is_http() || p.is_tls())
        }) {
            r.error(
                format!("spec.ports[{i}]"),
                "multiple hosts provided with non-HTTP, non-TLS ports",
            );
        }
    }

    export_to(r, &se.export_to, true, false);
}

fn resolution_rules(
    r: &mut Report<'_>,
    se: &ServiceEntry,
    resolution: &str,
    ports: &BTreeSet<&str>,
) {
    match resolution {
        "NONE" => {
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if se.workload_selector.is_some() {
                r.warn(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        "STATIC" => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                r.warn(
                    "spec.resolution",
                    "no endpoints are given for resolution type STATIC, so the service has no \
                     endpoints to send traffic to",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                workload_entry(r, ep, &format!("spec.endpoints[{i}]"), Some(ports), false);
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if names::fqdn(host).is_err() {
                        r.error(
                            format!("spec.hosts[{i}]"),
                            format!(
                                "hosts must be FQDN if no endpoints are provided for resolution mode {resolution}"
                            ),
                        );
                    }
                }
            }
            if resolution == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {resolution}"),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                workload_entry(r, ep, &format!("spec.endpoints[{i}]"), Some(ports), true);
            }
            if se.workload_selector.is_some() {
                r.warn(
                    "spec.workloadSelector",
                    format!(
                        "workloadSelector should not be set when resolution mode is {resolution}"
                    ),
                );
            }
        }
        "DYNAMIC_DNS" => {
            // Resolved per request from Host/SNI, so there is nothing to pin to endpoints or VIPs.
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type DYNAMIC_DNS",
                );
            }
            if !se.addresses.is_empty() {
                r.error(
                    "spec.addresses",
                    "addresses are not allowed for resolution type DYNAMIC_DNS",
                );
            }
            for (i, host) in se.hosts.iter().enumerate() {
                if !host.starts_with("*.") {
                    r.error(
                        format!("spec.hosts[{i}]"),
                        "resolution type DYNAMIC_DNS requires wildcard hosts (*.example.com)",
                    );
                }
            }
            for (i, port) in se.ports.iter().enumerate() {
                let p = port.protocol.as_deref().and_then(Protocol::parse);
                if !p.is_some_and(|p| p.is_http() || p.is_tls()) {
                    r.error(
                        format!("spec.ports[{i}].protocol"),
                        "resolution type DYNAMIC_DNS supports only HTTP, HTTP2, GRPC, HTTPS and TLS ports",
                    );
                }
            }
        }
        _ => {}
    }
}

/// A WorkloadEntry, standalone (`base` = `spec`) or as a ServiceEntry endpoint. `ports`: the
/// ServiceEntry's port names, which endpoint ports must refer to. `allow_fqdn`: DNS resolution
/// (and standalone entries, whose resolution is not known) may use host names.
pub(super) fn workload_entry(
    r: &mut Report<'_>,
    we: &WorkloadEntry,
    base: &str,
    ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let address = we.address.as_str();
    let address_path = format!("{base}.address");
    if address.is_empty() {
        match we.network.as_deref().filter(|n| !n.is_empty()) {
            None => r.error(address_path.clone(), "address is required"),
            Some(n) => r.warn(
                address_path.clone(),
                format!("address is unset with network {n:?}"),
            ),
        }
    }
    if let Some(path) = address.strip_prefix("unix://") {
        r.check(address_path.clone(), names::unix_address(path));
        if !we.ports.is_empty() {
            r.error(
                format!("{base}.ports"),
                format!("unix endpoint {address} must not include ports"),
            );
        }
    } else if !address.is_empty() && !is_ip(address) {
        if !allow_fqdn {
            r.error(
                address_path,
                format!("endpoint address {address:?} is not a valid IP address"),
            );
        } else if names::fqdn(address).is_err() {
            r.error(
                address_path,
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    for (name, port) in &we.ports {
        let path = format!("{base}.ports.{name}");
        if let Some(declared) = ports {
            if !declared.contains(name.as_str()) {
                r.error(
                    path.clone(),
                    format!("endpoint port {name:?} is not defined by the service entry ports"),
                );
            }
        }
        if !is_dns1123_label(name) {
            r.error(path.clone(), format!("invalid port name: {name}"));
        }
        r.check(path, names::port(*port));
    }
}
