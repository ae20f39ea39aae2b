//! Sidecar (`ValidateSidecar`): ingress and egress listeners, connection pools and the outbound
//! policy.

use std::collections::BTreeSet;

use crate::networking::{IstioIngressListener, ServicePort, Sidecar};

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

    let mut ingress_ports = BTreeSet::new();
    for (i, ingress) in sc.ingress.iter().enumerate() {
        ingress_listener(
            r,
            ingress,
            &format!("spec.ingress[{i}]"),
            &mut ingress_ports,
        );
    }
    if let Some(pool) = &sc.inbound_connection_pool {
        super::destination_rule::connection_pool(r, pool, "spec.inboundConnectionPool");
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
                port_name_protocol(r, port, &path);
                let bind = egress.bind.as_deref().unwrap_or("");
                let capture = egress.capture_mode.as_deref().unwrap_or("DEFAULT");
                capture_mode(r, &format!("{base}.captureMode"), capture);
                if port.number == 0 && capture == "IPTABLES" {
                    r.error(
                        format!("{base}.captureMode"),
                        "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
                    );
                }
                if port.number == 0 {
                    match bind.strip_prefix("unix://") {
                        Some(uds) => {
                            r.check(format!("{base}.bind"), names::unix_address(uds));
                            r.warn(
                                format!("{base}.bind"),
                                "sluice does not open egress listeners on unix domain sockets; \
                                 this listener is ignored",
                            );
                        }
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

    bound_listeners(r, sc);

    if let Some(policy) = &sc.outbound_traffic_policy {
        let mode = policy.mode.as_deref().unwrap_or("REGISTRY_ONLY");
        if mode != "REGISTRY_ONLY" && mode != "ALLOW_ANY" {
            r.error(
                "spec.outboundTrafficPolicy.mode",
                format!("invalid outboundTrafficPolicy mode {mode}; expected REGISTRY_ONLY or ALLOW_ANY"),
            );
        } else if let Some(proxy) = &policy.egress_proxy {
            let base = "spec.outboundTrafficPolicy.egressProxy";
            if mode != "ALLOW_ANY" {
                r.error(
                    base,
                    "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
                );
            } else if proxy.port.is_none() {
                r.error(
                    format!("{base}.port"),
                    "sidecar: egress_proxy port must be non-nil",
                );
            } else {
                super::virtual_service::destination(r, proxy, base);
            }
        }
    }
}

/// Ports a sidecar listens on itself (its defaults, as Istio's): a listener bound on one of them
/// could never open.
const SIDECAR_OWN_PORTS: [(u32, &str); 7] = [
    (15000, "admin"),
    (15001, "captured outbound"),
    (15006, "captured inbound"),
    (15020, "merged metrics"),
    (15021, "health"),
    (15080, "explicit proxy"),
    (15090, "Prometheus stats"),
];

/// Listeners the sidecar binds itself (`captureMode: NONE`): their ports must be free of the
/// sidecar's own and of each other's (sluice refuses what Istio would skip with a log line at
/// push time, so the author hears of it).
fn bound_listeners(r: &mut Report<'_>, sc: &Sidecar) {
    let none = |mode: Option<&str>| mode.is_some_and(|m| m == "NONE");
    let mut bound: Vec<(String, Option<std::net::IpAddr>, u32)> = Vec::new();
    let ingress = sc.ingress.iter().enumerate().filter_map(|(i, l)| {
        let port = l.port.as_ref()?;
        none(l.capture_mode.as_deref()).then(|| {
            let ip = l
                .bind
                .as_deref()
                .unwrap_or("0.0.0.0")
                .parse::<std::net::IpAddr>()
                .ok();
            (format!("spec.ingress[{i}]"), ip, port.number)
        })
    });
    let egress = sc.egress.iter().enumerate().filter_map(|(i, l)| {
        let port = l.port.as_ref().filter(|p| p.number != 0)?;
        none(l.capture_mode.as_deref()).then(|| {
            let ip = l
                .bind
                .as_deref()
                .unwrap_or("127.0.0.1")
                .parse::<std::net::IpAddr>()
                .ok();
            (format!("spec.egress[{i}]"), ip, port.number)
        })
    });
    for (base, ip, number) in ingress.chain(egress) {
        let field = format!("{base}.port.number");
        if let Some((_, what)) = SIDECAR_OWN_PORTS.iter().find(|(p, _)| *p == number) {
            r.error(
                field.clone(),
                format!(
                    "sidecar: port {number} is the sidecar's own {what} port; a listener with \
                     captureMode NONE cannot bind it"
                ),
            );
        }
        let clash = bound.iter().find(|(_, other_ip, other_port)| {
            *other_port == number
                && match (ip, other_ip) {
                    (Some(a), Some(b)) => a == *b || a.is_unspecified() || b.is_unspecified(),
                    _ => false,
                }
        });
        if let Some((other, _, _)) = clash {
            r.error(
                field,
                format!(
                    "sidecar: port {number} is already bound by the listener {other} \
                     (both have captureMode NONE on overlapping addresses)"
                ),
            );
        }
        bound.push((base, ip, number));
    }
}

/// A listener port's `targetPort`, `name` and `protocol`.
fn port_name_protocol(r: &mut Report<'_>, port: &ServicePort, path: &str) {
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
}

/// One `ingress` listener: its port (unique), bind, default endpoint, TLS and pool.
fn ingress_listener(
    r: &mut Report<'_>,
    l: &IstioIngressListener,
    base: &str,
    ports: &mut BTreeSet<u32>,
) {
    let Some(port) = &l.port else {
        r.error(
            format!("{base}.port"),
            "sidecar: port is required for ingress listeners",
        );
        return;
    };
    let path = format!("{base}.port");
    port_name_protocol(r, port, &path);
    r.check(format!("{path}.number"), names::port(port.number));
    if let Some(bind) = l.bind.as_deref().filter(|b| !b.is_empty()) {
        r.check(format!("{base}.bind"), names::ip_address(bind));
    }
    if let Some(mode) = l.capture_mode.as_deref() {
        capture_mode(r, &format!("{base}.captureMode"), mode);
    }
    if !ports.insert(port.number) {
        r.error(path, "sidecar: ports on IP bound listeners must be unique");
    }
    if let Some(ep) = l.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
        r.check(format!("{base}.defaultEndpoint"), default_endpoint(ep));
    }
    if let Some(tls) = &l.tls {
        let t = format!("{base}.tls");
        for (present, field, what) in [
            (
                !tls.subject_alt_names.is_empty(),
                "subjectAltNames",
                "subjectAltNames is not supported in ingress tls",
            ),
            (
                tls.https_redirect,
                "httpsRedirect",
                "httpsRedirect is not supported",
            ),
            (
                tls.credential_name
                    .as_deref()
                    .is_some_and(|c| !c.is_empty()),
                "credentialName",
                "credentialName is not currently supported",
            ),
            (
                !tls.credential_names.is_empty(),
                "credentialNames",
                "credentialNames is not currently supported",
            ),
            (
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
                "tls_certificates is not currently supported",
            ),
        ] {
            if present {
                r.error(format!("{t}.{field}"), format!("sidecar: {what}"));
            }
        }
        if let Some(mode @ ("ISTIO_MUTUAL" | "AUTO_PASSTHROUGH")) = tls.mode.as_deref() {
            r.error(
                format!("{t}.mode"),
                format!(
                    "configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"
                ),
            );
        }
        let tls_port = port
            .protocol
            .as_deref()
            .and_then(Protocol::parse)
            .is_some_and(Protocol::is_tls);
        if !tls_port {
            r.error(
                t.clone(),
                "server cannot have TLS settings for non HTTPS/TLS ports",
            );
        }
        super::gateway::tls_options(r, tls, &t);
    }
    if let Some(pool) = &l.connection_pool {
        let p = format!("{base}.connectionPool");
        super::destination_rule::connection_pool(r, pool, &p);
        let http = port
            .protocol
            .as_deref()
            .and_then(Protocol::parse)
            .is_some_and(Protocol::is_http);
        if pool.http.is_some() && !http {
            r.warn(
                format!("{p}.http"),
                format!(
                    "sidecar: HTTP connection pool settings are configured for port {} but its \
                     protocol is not HTTP; only TCP settings will apply",
                    port.number
                ),
            );
        }
    }
}

/// `captureMode`: `DEFAULT`, `IPTABLES` or `NONE`.
fn capture_mode(r: &mut Report<'_>, path: &str, mode: &str) {
    if !["DEFAULT", "IPTABLES", "NONE"].contains(&mode) {
        r.error(
            path,
            format!("invalid captureMode {mode}; expected one of DEFAULT, IPTABLES, NONE"),
        );
    }
}

/// `defaultEndpoint`: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or
/// `unix://PATH`.
fn default_endpoint(ep: &str) -> Result<(), String> {
    if let Some(uds) = ep.strip_prefix("unix://") {
        return names::unix_address(uds);
    }
    let form = "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,\
                [::1]:port,[::]:port,unix://filepath or unset";
    let (host, port) = ep.rsplit_once(':').ok_or_else(|| form.to_string())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !["", "127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host) {
        return Err(form.to_string());
    }
    let port: u32 = port
        .parse()
        .map_err(|_| format!("sidecar: defaultEndpoint port ({port}) is not a number"))?;
    names::port(port)
}
