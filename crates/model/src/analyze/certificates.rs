//! Certificate, key and CA files that Gateway servers and DestinationRules name by path
//! (`serverCertificate`, `privateKey`, `caCertificates`; `clientCertificate`, `privateKey`,
//! `caCertificates`) and that cannot be used: missing, unreadable, or not a regular file.
//!
//! The files live on the proxy's host, and a proxy retries them (a gateway stays not ready until
//! they are there), so these are warnings, never reasons to refuse a resource. Looking at files
//! is I/O, which `compile` and the proxies never do on an edit: the commands that check files
//! (`sluice validate`, `sluice analyze`) pass a function that looks at a path (`Ok` when a proxy
//! could read the file there), and tests pass one that pretends.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sluice_api::networking::{ClientTlsSettings, ServerTlsSettings, TrafficPolicy};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use super::{Message, CERTIFICATE_FILE_UNUSABLE};
use crate::gateway::ServerTlsMode;

/// Why a file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// Nothing at that path.
    Missing,
    /// There, but opening it for reading fails; the reason as the system gives it
    /// (`Permission denied`).
    Unreadable(String),
    /// A directory, FIFO, socket or device: a proxy reads only regular files.
    NotRegular,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Missing => f.write_str("does not exist"),
            FileProblem::Unreadable(reason) => write!(f, "is not readable: {reason}"),
            FileProblem::NotRegular => f.write_str("is not a regular file"),
        }
    }
}

impl FileProblem {
    /// What would make the file usable, as the end of "… until it …".
    fn until(&self) -> &'static str {
        match self {
            FileProblem::Missing => "does",
            FileProblem::Unreadable(_) => "is readable",
            FileProblem::NotRegular => "is a regular file",
        }
    }
}

/// A file path a resource names for a certificate, key or CA.
struct NamedFile<'r> {
    resource: &'r Resource,
    /// `spec.servers[0].tls.serverCertificate`.
    field: String,
    path: &'r str,
    /// What does not work while the file cannot be used, as the start of "(… until it …)".
    effect: String,
}

/// Every file path the resources name that a proxy would read, in resource order. Paths that
/// would not be read are left out: a server or rule that takes its certificate from
/// `credentialName`, and modes without certificates of their own (PASSTHROUGH, ISTIO_MUTUAL).
fn named_files(resources: &[Resource]) -> Vec<NamedFile<'_>> {
    let mut out = Vec::new();
    for res in resources {
        match &res.spec {
            Spec::Gateway(gw) => {
                for (i, server) in gw.servers.iter().enumerate() {
                    if let Some(tls) = &server.tls {
                        gateway_files(res, &format!("spec.servers[{i}].tls"), tls, &mut out);
                    }
                }
            }
            Spec::DestinationRule(dr) => {
                let effect = format!("TLS connections to {} will fail", dr.host);
                let mut policies = Vec::new();
                if let Some(tp) = &dr.traffic_policy {
                    policies.push(("spec.trafficPolicy".to_string(), tp));
                }
                for (i, s) in dr.subsets.iter().enumerate() {
                    if let Some(tp) = &s.traffic_policy {
                        policies.push((format!("spec.subsets[{i}].trafficPolicy"), tp));
                    }
                }
                for (base, tp) in policies {
                    policy_files(res, &base, tp, &effect, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

fn gateway_files<'r>(
    res: &'r Resource,
    base: &str,
    tls: &'r ServerTlsSettings,
    out: &mut Vec<NamedFile<'r>>,
) {
    let uses_files = matches!(
        ServerTlsMode::parse(tls.mode.as_deref()),
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) && set(&tls.credential_name).is_none()
        && tls.credential_names.iter().all(|n| n.trim().is_empty());
    if !uses_files {
        return;
    }
    for (name, value) in [
        ("serverCertificate", &tls.server_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ] {
        if let Some(path) = set(value) {
            out.push(NamedFile {
                resource: res,
                field: format!("{base}.{name}"),
                path,
                effect: "the gateway will not be ready".to_string(),
            });
        }
    }
}

fn policy_files<'r>(
    res: &'r Resource,
    base: &str,
    tp: &'r TrafficPolicy,
    effect: &str,
    out: &mut Vec<NamedFile<'r>>,
) {
    let mut tls = vec![(format!("{base}.tls"), tp.tls.as_ref())];
    for (j, pl) in tp.port_level_settings.iter().enumerate() {
        tls.push((
            format!("{base}.portLevelSettings[{j}].tls"),
            pl.tls.as_ref(),
        ));
    }
    for (field, settings) in tls {
        if let Some(settings) = settings {
            client_files(res, &field, settings, effect, out);
        }
    }
}

fn client_files<'r>(
    res: &'r Resource,
    base: &str,
    tls: &'r ClientTlsSettings,
    effect: &str,
    out: &mut Vec<NamedFile<'r>>,
) {
    let mode = tls.mode.as_deref().unwrap_or("").to_ascii_uppercase();
    if set(&tls.credential_name).is_some() {
        return;
    }
    let mut fields = vec![("caCertificates", &tls.ca_certificates)];
    match mode.as_str() {
        "SIMPLE" => {}
        // Only MUTUAL presents a certificate of its own.
        "MUTUAL" => fields.extend([
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
        ]),
        _ => return,
    }
    for (name, value) in fields {
        if let Some(path) = set(value) {
            out.push(NamedFile {
                resource: res,
                field: format!("{base}.{name}"),
                path,
                effect: effect.to_string(),
            });
        }
    }
}

/// Every named file `check` finds unusable, with its problem; each distinct path is looked at
/// once however many resources name it.
fn unusable<'r>(
    resources: &'r [Resource],
    mut check: impl FnMut(&Path) -> Result<(), FileProblem>,
) -> Vec<(NamedFile<'r>, FileProblem)> {
    let mut seen: HashMap<&str, Result<(), FileProblem>> = HashMap::new();
    let mut out = Vec::new();
    for file in named_files(resources) {
        let result = seen
            .entry(file.path)
            .or_insert_with(|| check(Path::new(file.path)))
            .clone();
        if let Err(problem) = result {
            out.push((file, problem));
        }
    }
    out
}

fn text(file: &NamedFile<'_>, problem: &FileProblem) -> String {
    format!(
        "file {} {problem} ({} until it {})",
        file.path,
        file.effect,
        problem.until()
    )
}

/// Warnings for `sluice validate`: one per named file that `check` finds unusable, on its
/// field's line (`gw.yaml:12: Gateway istio-system/gw: spec.servers[0].tls.serverCertificate:
/// warning: file /etc/certs/tls.crt does not exist (the gateway will not be ready until it
/// does)`).
pub fn certificate_file_diagnostics(
    resources: &[Resource],
    check: impl FnMut(&Path) -> Result<(), FileProblem>,
) -> Vec<Diagnostic> {
    unusable(resources, check)
        .into_iter()
        .map(|(file, problem)| {
            Diagnostic::at(
                file.resource,
                Severity::Warning,
                file.field.clone(),
                text(&file, &problem),
            )
        })
        .collect()
}

/// The same problems as [`CERTIFICATE_FILE_UNUSABLE`] messages for `sluice analyze`.
pub fn certificate_file_messages(
    resources: &[Resource],
    check: impl FnMut(&Path) -> Result<(), FileProblem>,
) -> Vec<Message> {
    unusable(resources, check)
        .into_iter()
        .map(|(file, problem)| {
            Message::at(
                &CERTIFICATE_FILE_UNUSABLE,
                file.resource,
                &file.field,
                format!("{}: {}", file.field, text(&file, &problem)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn decode(text: &str) -> Vec<Resource> {
        let out = sluice_api::decode_str(Path::new("c.yaml"), text);
        assert!(!out.has_errors(), "{:?}", out.diagnostics);
        out.resources
    }

    const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: /certs/tls.crt
      privateKey: /certs/tls.key
      caCertificates: /certs/ca.crt
  - port: {number: 444, name: https-2, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: gw-cert, serverCertificate: /ignored.crt}
  - port: {number: 445, name: tls, protocol: TLS}
    hosts: [c.example.com]
    tls: {mode: PASSTHROUGH, serverCertificate: /ignored.crt}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec:
  host: a.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, clientCertificate: /certs/client.crt, privateKey: /certs/client.key, caCertificates: /certs/ca.crt}
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: SIMPLE, caCertificates: /certs/port-ca.crt, clientCertificate: /ignored.crt}
  subsets:
  - name: v1
    labels: {v: v1}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL, caCertificates: /ignored.crt}
";

    #[test]
    fn every_file_a_proxy_would_read_is_looked_at_once() {
        let resources = decode(CONFIG);
        let mut looked_at = Vec::new();
        let diags = certificate_file_diagnostics(&resources, |p: &Path| {
            looked_at.push(p.to_path_buf());
            match p.to_str() {
                Some("/certs/tls.key") => Err(FileProblem::Unreadable("Permission denied".into())),
                Some("/certs/ca.crt") => Err(FileProblem::NotRegular),
                Some("/certs/port-ca.crt") => Err(FileProblem::Missing),
                _ => Ok(()),
            }
        });
        let expected: Vec<PathBuf> = [
            "/certs/tls.crt",
            "/certs/tls.key",
            "/certs/ca.crt",
            "/certs/client.crt",
            "/certs/client.key",
            "/certs/port-ca.crt",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(looked_at, expected);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "c.yaml:11: Gateway istio-system/gw: spec.servers[0].tls.privateKey: warning: file /certs/tls.key is not readable: Permission denied (the gateway will not be ready until it is readable)",
                "c.yaml:12: Gateway istio-system/gw: spec.servers[0].tls.caCertificates: warning: file /certs/ca.crt is not a regular file (the gateway will not be ready until it is a regular file)",
                "c.yaml:26: DestinationRule default/dr: spec.trafficPolicy.tls.caCertificates: warning: file /certs/ca.crt is not a regular file (TLS connections to a.example.com will fail until it is a regular file)",
                "c.yaml:29: DestinationRule default/dr: spec.trafficPolicy.portLevelSettings[0].tls.caCertificates: warning: file /certs/port-ca.crt does not exist (TLS connections to a.example.com will fail until it does)",
            ]
        );
        assert!(diags.iter().all(|d| !d.is_error()));
    }

    #[test]
    fn analyze_reports_them_with_a_sluice_code() {
        let resources = decode(CONFIG);
        let messages = certificate_file_messages(&resources, |p: &Path| {
            if p == Path::new("/certs/tls.crt") {
                Err(FileProblem::Missing)
            } else {
                Ok(())
            }
        });
        let lines: Vec<String> = messages.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["Warning [SLU0002] (Gateway istio-system/gw c.yaml:10) spec.servers[0].tls.serverCertificate: file /certs/tls.crt does not exist (the gateway will not be ready until it does)"]
        );
    }
}
