//! DestinationRule (`ValidateDestinationRule`, `validateTrafficPolicy`, `ValidateTLS`).

use std::collections::BTreeSet;

use crate::networking::{ClientTlsSettings, DestinationRule, TrafficPolicy};

use super::common::{export_to, workload_selector};
use super::names::{self, is_dns1123_label};
use super::Report;

const CLIENT_TLS_MODES: [&str; 4] = ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"];

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
        } else if let Some(tls) = &p.tls {
            client_tls(r, tls, &format!("{path}.tls"));
        }
    }
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
