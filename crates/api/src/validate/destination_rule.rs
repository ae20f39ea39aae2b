//! DestinationRule (`ValidateDestinationRule`, `validateTrafficPolicy`, `ValidateTLS`).

use std::collections::BTreeSet;

use crate::duration::Duration;
use crate::networking::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    LocalityFailover, LocalityLbSetting, OutlierDetection, RetryBudget, TrafficPolicy,
    TunnelSettings, WarmupConfiguration, ZoneAwareLbSetting,
};

use super::common::export_to;
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
        super::security::selector_labels(r, "spec.workloadSelector.matchLabels", &sel.match_labels);
        if sel.match_labels.is_empty() {
            r.warn(
                "spec.workloadSelector",
                "workload selector specified without labels",
            );
        }
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
    if let Some(tunnel) = &tp.tunnel {
        tunnel_settings(r, tunnel, &format!("{base}.tunnel"));
    }
    if let Some(pp) = &tp.proxy_protocol {
        if let Some(v) = pp.version.as_deref().filter(|v| !["V1", "V2"].contains(v)) {
            r.error(
                format!("{base}.proxyProtocol.version"),
                format!("invalid proxy protocol version {v}; expected V1 or V2"),
            );
        }
    }
    if let Some(budget) = &tp.retry_budget {
        retry_budget(r, budget, &format!("{base}.retryBudget"));
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
        load_balancer(r, lb, outlier.is_some(), &format!("{base}.loadBalancer"));
    }
}

/// `validateTunnelSettings`.
fn tunnel_settings(r: &mut Report<'_>, t: &TunnelSettings, base: &str) {
    if let Some(p) = t
        .protocol
        .as_deref()
        .filter(|p| !["", "CONNECT", "POST"].contains(p))
    {
        r.error(
            format!("{base}.protocol"),
            format!("tunnel protocol must be \"CONNECT\" or \"POST\", not {p:?}"),
        );
    }
    if t.target_host.is_empty() {
        r.error(
            format!("{base}.targetHost"),
            "tunnel target host is required",
        );
    } else if names::fqdn(&t.target_host).is_err() && !names::is_ip(&t.target_host) {
        r.error(
            format!("{base}.targetHost"),
            format!(
                "tunnel target host must be a valid FQDN or IP address: {}",
                t.target_host
            ),
        );
    }
    if let Err(e) = names::port(t.target_port) {
        r.error(
            format!("{base}.targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}

/// `retryBudget`: the CRD's bounds.
fn retry_budget(r: &mut Report<'_>, b: &RetryBudget, base: &str) {
    if let Some(p) = b.percent.filter(|p| !(0.0..=100.0).contains(p)) {
        r.error(
            format!("{base}.percent"),
            format!("percent must be between 0 and 100, got {p}"),
        );
    }
    duration_field(
        r,
        format!("{base}.budgetInterval"),
        b.budget_interval.as_ref(),
    );
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
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            r.error(
                format!("{base}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("HTTP status code {code} is not in range 100..599"),
            );
        }
    }
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
pub(super) fn connection_pool(r: &mut Report<'_>, pool: &ConnectionPoolSettings, base: &str) {
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
        if let Some(ka) = &http.http2_keep_alive {
            let k = format!("{b}.http2KeepAlive");
            for (field, value) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                match value {
                    None => r.error(
                        format!("{k}.{field}"),
                        format!("http2 keepalive {field} is required"),
                    ),
                    Some(d) => r.check(format!("{k}.{field}"), names::duration(d)),
                }
            }
        }
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
fn load_balancer(r: &mut Report<'_>, lb: &LoadBalancerSettings, outlier: bool, base: &str) {
    let policies = usize::from(lb.simple.is_some())
        + usize::from(lb.consistent_hash.is_some())
        + usize::from(lb.backend_utilization.is_some());
    if policies > 1 {
        r.error(
            base,
            "only one of simple, consistentHash or backendUtilization can be set",
        );
    }
    if let Some(bu) = &lb.backend_utilization {
        let b = format!("{base}.backendUtilization");
        for (field, d) in [
            ("weightExpirationPeriod", &bu.weight_expiration_period),
            ("weightStabilizationPeriod", &bu.weight_stabilization_period),
            ("weightUpdatePeriod", &bu.weight_update_period),
        ] {
            duration_field(r, format!("{b}.{field}"), d.as_ref());
        }
    }
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
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                r.error(
                    format!("{b}.httpCookie.name"),
                    "name required for HttpCookie",
                );
            }
            let mut seen = BTreeSet::new();
            for (i, attr) in cookie.attributes.iter().enumerate() {
                let path = format!("{b}.httpCookie.attributes[{i}].name");
                if attr.name.is_empty() {
                    r.error(path, "cookie attribute name cannot be empty");
                } else if !seen.insert(attr.name.as_str()) {
                    r.error(
                        path,
                        format!("duplicate cookie attribute name: {}", attr.name),
                    );
                }
            }
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
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        r.error(
            base,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(r, l, outlier, &format!("{base}.localityLbSetting"));
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        zone_aware_lb(r, z, outlier, &format!("{base}.zoneAwareLbSetting"));
    }
    duration_field(
        r,
        format!("{base}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if let Some(w) = &lb.warmup {
        warmup(r, w, &format!("{base}.warmup"));
    }
}

/// `warmup`: the webhook's and the CRD's bounds.
fn warmup(r: &mut Report<'_>, w: &WarmupConfiguration, base: &str) {
    match &w.duration {
        None => r.error(format!("{base}.duration"), "duration is required"),
        Some(d) => r.check(format!("{base}.duration"), names::duration(d)),
    }
    if let Some(p) = w.minimum_percent.filter(|p| !(0.0..=100.0).contains(p)) {
        r.error(
            format!("{base}.minimumPercent"),
            format!("minimumPercent must be between 0 and 100, got {p}"),
        );
    }
    if let Some(a) = w.aggression.filter(|a| *a <= 0.0 || a.is_nan()) {
        r.error(
            format!("{base}.aggression"),
            format!("aggression should be greater than 0, got {a}"),
        );
    }
}

/// The topology labels that locality load balancing already orders by.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// `ValidateLocalityLbSetting`.
fn locality_lb(r: &mut Report<'_>, l: &LocalityLbSetting, outlier: bool, base: &str) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.error(
            base,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !l.failover.is_empty() {
        if let Some(label) = l
            .failover_priority
            .iter()
            .find(|p| TOPOLOGY_LABELS.contains(&p.as_str()))
        {
            r.error(
                format!("{base}.failoverPriority"),
                format!(
                    "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
                ),
            );
            return;
        }
    }
    let mut sources = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let path = format!("{base}.distribute[{i}]");
        sources.push(d.from.as_str());
        if d.to.values().any(|w| !(1..=100).contains(w)) {
            r.error(
                format!("{path}.to"),
                "locality weight must be in range [1, 100]",
            );
            return;
        }
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            r.error(
                format!("{path}.to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        let to: Vec<&str> = d.to.keys().map(String::as_str).collect();
        r.check(format!("{path}.to"), localities(&to));
    }
    r.check(format!("{base}.distribute"), localities(&sources));
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !outlier {
        r.warn(
            base,
            "outlier detection policy must be provided for failover",
        );
    }
    failovers(
        r,
        &l.failover,
        base,
        "locality lb failover",
        "locality lb failover only specify region",
    );
}

/// `ValidateZoneAwareLbSetting`.
fn zone_aware_lb(r: &mut Report<'_>, z: &ZoneAwareLbSetting, outlier: bool, base: &str) {
    for (i, label) in z.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            r.error(
                format!("{base}.failoverPriority[{i}]"),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{label}'; \
                     region- and zone-level routing are handled automatically"
                ),
            );
        }
    }
    if z.min_cluster_size == Some(0) {
        r.error(
            format!("{base}.minClusterSize"),
            "minClusterSize must be at least 1",
        );
    }
    if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !outlier {
        r.warn(
            base,
            "outlier detection policy must be provided for failover",
        );
    }
    failovers(
        r,
        &z.failover,
        base,
        "zone aware lb failover",
        "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
    );
}

/// The region-to-region failover pairs of both locality settings.
fn failovers(
    r: &mut Report<'_>,
    list: &[LocalityFailover],
    base: &str,
    what: &str,
    region_only: &str,
) {
    for (i, f) in list.iter().enumerate() {
        let path = format!("{base}.failover[{i}]");
        if f.from == f.to {
            let settings = what.trim_end_matches(" failover");
            r.error(
                path.clone(),
                format!("{settings} failover settings must specify different regions"),
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.error(path.clone(), region_only);
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.error(
                path,
                format!("{what} region should not contain '*' wildcard"),
            );
        }
    }
}

/// `validateLocalities`: `region[/zone[/subzone]]`, a single trailing `*`, none overlapping.
fn localities(list: &[&str]) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks "all of it".
    let mut seen: std::collections::BTreeMap<
        &str,
        std::collections::BTreeMap<&str, BTreeSet<&str>>,
    > = std::collections::BTreeMap::new();
    let overlap = |l: &str| format!("locality {l} overlap with previous specified ones");
    for &l in list {
        let stars = l.matches('*').count();
        if stars > 1 || (stars == 1 && !l.ends_with('*')) {
            return Err(format!(
                "locality {l} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        if seen.contains_key("*") {
            return Err(overlap(l));
        }
        let parts: Vec<&str> = l.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {l} must not contain empty region/zone/subzone info"
            ));
        }
        let region = parts[0];
        let zone = parts.get(1).copied().unwrap_or("*");
        let sub = parts.get(2).copied().unwrap_or("*");
        if parts.len() == 1 || region == "*" {
            if seen.contains_key(region) {
                return Err(overlap(l));
            }
            seen.insert(region, [("*", BTreeSet::from(["*"]))].into());
            continue;
        }
        let zones = seen.entry(region).or_default();
        if zones.contains_key("*") {
            return Err(overlap(l));
        }
        if parts.len() == 2 || zone == "*" {
            if zones.contains_key(zone) {
                return Err(overlap(l));
            }
            zones.insert(zone, BTreeSet::from(["*"]));
            continue;
        }
        let subs = zones.entry(zone).or_default();
        if subs.contains("*") || !subs.insert(sub) {
            return Err(overlap(l));
        }
    }
    Ok(())
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
