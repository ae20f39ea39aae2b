//! DestinationRule (`ValidateDestinationRule`, `validateTrafficPolicy`, `ValidateTLS`).

use std::collections::BTreeSet;

use crate::duration::Duration;
use crate::networking::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};

use super::common::{export_to, workload_selector};
use super::names::{self, is_dns1123_label};
use super::Report;

const CLIENT_TLS_MODES: [&str; 4] = ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"];
const SIMPLE_LB: [&str; 6] = [
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];
const H2_UPGRADE_POLICIES: [&str; 3] = ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"];
/// Envoy's bound on the Maglev table size.
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

pub(super) fn check(r: &mut Report<'_>, dr: &DestinationRule) {
    if dr.host.is_empty() {
        r.error("spec.host", "host is required");
    } else {
        r.check("spec.host", names::wildcard_domain(&dr.host));
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(r, tp, "spec.trafficPolicy");
    }
    let mut seen = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let base = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            r.error(format!("{base}.name"), "subset name cannot be empty");
        } else if !is_dns1123_label(&subset.name) {
            r.error(
                format!("{base}.name"),
                format!("subset name is invalid: {}", subset.name),
            );
        }
        if !seen.insert(subset.name.as_str()) {
            r.error(
                format!("{base}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(r, tp, &format!("{base}.trafficPolicy"));
        }
    }
    export_to(r, &dr.export_to, false, dr.workload_selector.is_some());
    if let Some(sel) = &dr.workload_selector {
        workload_selector(r, "spec.workloadSelector", &sel.labels, "destination rule");
    }
}

fn traffic_policy(r: &mut Report<'_>, tp: &TrafficPolicy, base: &str) {
    let empty = tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        r.error(base, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(base, "tunnel and proxyProtocol must not be set together");
    }
    components(
        r,
        base,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
    );
    if let Some(tls) = &tp.tls {
        client_tls(r, tls, &format!("{base}.tls"));
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let path = format!("{base}.portLevelSettings[{i}]");
        match &p.port {
            None => r.error(path.clone(), "portTrafficPolicy must have valid port"),
            Some(port) => r.check(format!("{path}.port.number"), names::port(port.number)),
        }
        if p.load_balancer.is_none()
            && p.connection_pool.is_none()
            && p.outlier_detection.is_none()
            && p.tls.is_none()
        {
            r.error(path, "port traffic policy must have at least one field");
        } else {
            components(
                r,
                &path,
                p.load_balancer.as_ref(),
                p.connection_pool.as_ref(),
                p.outlier_detection.as_ref(),
            );
            if let Some(tls) = &p.tls {
                client_tls(r, tls, &format!("{path}.tls"));
            }
        }
    }
}

/// The components a traffic policy and a port-level policy share.
fn components(
    r: &mut Report<'_>,
    base: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
) {
    if let Some(od) = outlier {
        outlier_detection(r, od, &format!("{base}.outlierDetection"));
    }
    if let Some(pool) = pool {
        connection_pool(r, pool, &format!("{base}.connectionPool"));
    }
    if let Some(lb) = lb {
        load_balancer(r, lb, &format!("{base}.loadBalancer"));
    }
}

fn duration_field(r: &mut Report<'_>, path: String, d: Option<&Duration>) {
    if let Some(d) = d {
        r.check(path, names::duration(d));
    }
}

/// `validateOutlierDetection`.
fn outlier_detection(r: &mut Report<'_>, od: &OutlierDetection, base: &str) {
    duration_field(
        r,
        format!("{base}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        r.warn(
            format!("{base}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if od.split_external_local_origin_errors != Some(true)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        r.error(
            format!("{base}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    duration_field(r, format!("{base}.interval"), od.interval.as_ref());
    for (field, value) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = value.filter(|v| !(0..=100).contains(v)) {
            r.error(
                format!("{base}.{field}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

/// `validateConnectionPool`.
fn connection_pool(r: &mut Report<'_>, pool: &ConnectionPoolSettings, base: &str) {
    if pool.http.is_none() && pool.tcp.is_none() {
        r.error(base, "connection pool must have at least one field");
        return;
    }
    let non_negative = |r: &mut Report<'_>, path: String, v: Option<i32>, what: &str| {
        if v.is_some_and(|v| v < 0) {
            r.error(path, format!("{what} must be non-negative"));
        }
    };
    if let Some(http) = &pool.http {
        let b = format!("{base}.http");
        non_negative(
            r,
            format!("{b}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
            "http1 max pending requests",
        );
        non_negative(
            r,
            format!("{b}.http2MaxRequests"),
            http.http2_max_requests,
            "http2 max requests",
        );
        non_negative(
            r,
            format!("{b}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
            "max requests per connection",
        );
        non_negative(
            r,
            format!("{b}.maxRetries"),
            http.max_retries,
            "max retries",
        );
        duration_field(r, format!("{b}.idleTimeout"), http.idle_timeout.as_ref());
        let policy = http.h2_upgrade_policy.as_deref().unwrap_or("DEFAULT");
        if !H2_UPGRADE_POLICIES.contains(&policy) {
            r.error(
                format!("{b}.h2UpgradePolicy"),
                format!(
                    "invalid h2UpgradePolicy {policy}; expected one of {}",
                    H2_UPGRADE_POLICIES.join(", ")
                ),
            );
        } else if policy == "UPGRADE" && http.use_client_protocol == Some(true) {
            r.error(
                format!("{b}.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        non_negative(
            r,
            format!("{b}.maxConcurrentStreams"),
            http.max_concurrent_streams,
            "max concurrent streams",
        );
    }
    if let Some(tcp) = &pool.tcp {
        let b = format!("{base}.tcp");
        non_negative(
            r,
            format!("{b}.maxConnections"),
            tcp.max_connections,
            "max connections",
        );
        duration_field(
            r,
            format!("{b}.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        );
        duration_field(
            r,
            format!("{b}.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
        );
        // `0s` disables the idle timeout and is accepted.
        duration_field(
            r,
            format!("{b}.idleTimeout"),
            tcp.idle_timeout.as_ref().filter(|d| !d.0.is_zero()),
        );
        if let Some(ka) = &tcp.tcp_keepalive {
            duration_field(r, format!("{b}.tcpKeepalive.time"), ka.time.as_ref());
            duration_field(
                r,
                format!("{b}.tcpKeepalive.interval"),
                ka.interval.as_ref(),
            );
        }
    }
}

/// `validateLoadBalancer`.
fn load_balancer(r: &mut Report<'_>, lb: &LoadBalancerSettings, base: &str) {
    if let Some(simple) = &lb.simple {
        if !SIMPLE_LB.contains(&simple.as_str()) {
            r.error(
                format!("{base}.simple"),
                format!(
                    "invalid load balancer {simple}; expected one of {}",
                    SIMPLE_LB.join(", ")
                ),
            );
        }
        if lb.consistent_hash.is_some() {
            r.error(base, "only one of simple or consistentHash can be set");
        }
    }
    if let Some(ch) = &lb.consistent_hash {
        let b = format!("{base}.consistentHash");
        let keys = usize::from(ch.http_header_name.is_some())
            + usize::from(ch.http_cookie.is_some())
            + usize::from(ch.use_source_ip.is_some())
            + usize::from(ch.http_query_parameter_name.is_some());
        if keys > 1 {
            r.error(
                b.clone(),
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName can be set",
            );
        }
        if ch.http_cookie.as_ref().is_some_and(|c| c.name.is_empty()) {
            r.error(
                format!("{b}.httpCookie.name"),
                "name required for HttpCookie",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.error(b.clone(), "only one of ringHash or maglev can be set");
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            r.warn(
                format!("{b}.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                r.error(
                    format!("{b}.minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(ml) = &ch.maglev {
            let path = format!("{b}.maglev.tableSize");
            let size = ml.table_size.unwrap_or(0);
            if size == 0 {
                r.error(path.clone(), "tableSize must be set for maglev");
            }
            if size >= MAGLEV_MAX_TABLE_SIZE {
                r.error(
                    path.clone(),
                    "tableSize must be less than 5000011 for maglev",
                );
            }
            if !is_prime(size) {
                r.error(path, "tableSize must be a prime number for maglev");
            }
        }
    }
    duration_field(
        r,
        format!("{base}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
}

/// Envoy's primality test for Maglev table sizes (`isPrime` in Istio, copied from Envoy).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// TLS origination settings.
fn client_tls(r: &mut Report<'_>, tls: &ClientTlsSettings, base: &str) {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    if !CLIENT_TLS_MODES.contains(&mode) {
        r.error(
            format!("{base}.mode"),
            format!(
                "invalid tls mode {mode}; expected one of {}",
                CLIENT_TLS_MODES.join(", ")
            ),
        );
        return;
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if tls.insecure_skip_verify == Some(true) {
        if mode == "SIMPLE"
            && (set(&tls.ca_certificates)
                || set(&tls.credential_name)
                || !tls.subject_alt_names.is_empty())
        {
            r.error(
                base,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == "MUTUAL" && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty()) {
            r.error(
                base,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if (mode == "SIMPLE" || mode == "MUTUAL") && set(&tls.credential_name) {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            r.error(
                base,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if mode == "MUTUAL" {
        if !set(&tls.client_certificate) {
            r.error(
                format!("{base}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !set(&tls.private_key) {
            r.error(
                format!("{base}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}
