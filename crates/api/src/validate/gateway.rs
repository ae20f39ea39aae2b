//! Gateway (`ValidateGateway`, `validateServer`, `validateTLSOptions`).

use std::collections::BTreeSet;

use crate::networking::{Gateway, Server, ServerTlsSettings};

use super::names::{self, Protocol};
use super::Report;

const SERVER_TLS_MODES: [&str; 6] = [
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
];

const SUPPORTED: &str = "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS";

pub(super) fn check(r: &mut Report<'_>, gw: &Gateway) {
    if gw.servers.is_empty() {
        r.error("spec.servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in gw.servers.iter().enumerate() {
        let base = format!("spec.servers[{i}]");
        check_server(r, server, &base);
        let name = server.port.name.as_str();
        if !port_names.insert(name) {
            r.error(
                format!("{base}.port.name"),
                format!("port names in servers must be unique: duplicate name {name}"),
            );
        }
        let http = protocol(server).is_some_and(Protocol::is_http);
        if !http && server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            r.warn(
                format!("{base}.tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

fn protocol(server: &Server) -> Option<Protocol> {
    server.port.protocol.as_deref().and_then(Protocol::parse)
}

fn check_server(r: &mut Report<'_>, server: &Server, base: &str) {
    if server.hosts.is_empty() {
        r.error(
            format!("{base}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        for e in names::namespace_slash_host(host, true) {
            r.error(format!("{base}.hosts[{i}]"), e);
        }
    }

    let bind = server.bind.as_deref().unwrap_or("");
    let port = &server.port;
    let mut port_ok = true;
    let proto = protocol(server);
    match port.protocol.as_deref() {
        None | Some("") => {
            r.error(
                format!("{base}.port.protocol"),
                format!("port protocol is required; supported protocols are {SUPPORTED}"),
            );
            port_ok = false;
        }
        Some(p)
            if proto.is_none()
                || proto == Some(Protocol::Udp)
                || proto == Some(Protocol::HttpProxy) =>
        {
            r.error(
                format!("{base}.port.protocol"),
                format!("invalid protocol {p:?}, supported protocols are {SUPPORTED}"),
            );
            port_ok = false;
        }
        Some(_) => {}
    }
    if port.number > 0 || !bind.starts_with("unix://") {
        if let Err(e) = names::port(port.number) {
            r.error(format!("{base}.port.number"), e);
            port_ok = false;
        }
    }
    if port.target_port.is_some_and(|t| t > 0) {
        r.error(
            format!("{base}.port.targetPort"),
            "targetPort has no impact on Gateways",
        );
    }
    if port.name.is_empty() {
        r.error(format!("{base}.port.name"), "port name must be set");
        port_ok = false;
    }

    if let Some(path) = bind.strip_prefix("unix://") {
        r.check(format!("{base}.bind"), names::unix_address(path));
        if port.number != 0 {
            r.error(
                format!("{base}.port.number"),
                "port number must be 0 for unix domain socket",
            );
        }
    } else if !bind.is_empty() {
        r.check(format!("{base}.bind"), names::ip_address(bind));
    }

    if let Some(tls) = &server.tls {
        tls_options(r, tls, &format!("{base}.tls"));
    }

    if let (true, Some(p)) = (port_ok, proto) {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        match &server.tls {
            None if p.is_tls() => {
                r.error(
                    base,
                    "server must have TLS settings for HTTPS/TLS protocols",
                );
            }
            Some(tls) if !p.is_tls() => {
                if p.is_http() {
                    // `tls: {httpsRedirect: true}` on a plain HTTP server is the one allowed form.
                    let passthrough = matches!(
                        tls.mode.as_deref().unwrap_or("PASSTHROUGH"),
                        "PASSTHROUGH" | "AUTO_PASSTHROUGH"
                    );
                    if !passthrough
                        || set(&tls.ca_certificates)
                        || set(&tls.private_key)
                        || set(&tls.server_certificate)
                    {
                        r.error(
                            format!("{base}.tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                } else {
                    r.error(
                        format!("{base}.tls"),
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                }
            }
            _ => {}
        }
    }
}

/// The TLS protocol versions of `minProtocolVersion` / `maxProtocolVersion`.
const TLS_VERSIONS: [&str; 5] = ["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];

/// The cipher suites a gateway can offer (BoringSSL's names, without PSK).
const CIPHER_SUITES: [&str; 15] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// `IsValidCipherSuite`: a known suite, `ALL`, or an expression starting with an operator.
fn valid_cipher(cs: &str) -> bool {
    cs.is_empty()
        || cs == "ALL"
        || !cs.starts_with(|c: char| c.is_alphanumeric())
        || CIPHER_SUITES.contains(&cs)
}

/// `validateTLSOptions`, with the CRD's rules on certificate sources (Gateway servers and
/// Sidecar ingress listeners).
pub(super) fn tls_options(r: &mut Report<'_>, tls: &ServerTlsSettings, base: &str) {
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    if !SERVER_TLS_MODES.contains(&mode) {
        r.error(
            format!("{base}.mode"),
            format!(
                "invalid tls mode {mode}; expected one of {}",
                SERVER_TLS_MODES.join(", ")
            ),
        );
        return;
    }
    for (field, v) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !TLS_VERSIONS.contains(v)) {
            r.error(
                format!("{base}.{field}"),
                format!(
                    "invalid TLS version {v}; expected one of {}",
                    TLS_VERSIONS.join(", ")
                ),
            );
        }
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if matches!(
        tls.min_protocol_version.as_deref(),
        Some("TLSV1_0" | "TLSV1_1")
    ) && tls.cipher_suites.is_empty()
    {
        r.warn(
            format!("{base}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no \
             longer include compatible ciphers.",
        );
    }
    let mut invalid = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !valid_cipher(cs) {
            invalid.insert(cs.as_str());
        } else if !seen.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    for (list, what) in [(&invalid, "invalid"), (&duplicate, "duplicate")] {
        if !list.is_empty() {
            let names: Vec<&str> = list.iter().copied().collect();
            r.warn(
                format!("{base}.cipherSuites"),
                format!("ignoring {what} cipher suites: [{}]", names.join(" ")),
            );
        }
    }
    for (field, len) in [
        ("credentialNames", tls.credential_names.len()),
        ("tlsCertificates", tls.tls_certificates.len()),
    ] {
        if len > 2 {
            r.error(
                format!("{base}.{field}"),
                format!("{field} may hold at most 2 entries, found {len}"),
            );
        }
    }
    if mode == "ISTIO_MUTUAL" {
        for (field, present, what) in [
            (
                "serverCertificate",
                set(&tls.server_certificate),
                "server certificate",
            ),
            ("privateKey", set(&tls.private_key), "private key"),
            ("caCertificates", set(&tls.ca_certificates), "CA bundle"),
            (
                "tlsCertificates",
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
            ),
            (
                "credentialName",
                set(&tls.credential_name),
                "credentialName",
            ),
            (
                "credentialNames",
                !tls.credential_names.is_empty(),
                "credentialNames",
            ),
        ] {
            if present {
                r.error(
                    format!("{base}.{field}"),
                    format!("ISTIO_MUTUAL TLS cannot have associated {what}"),
                );
            }
        }
        return;
    }
    let has_files = set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || set(&tls.credential_name)
        || !tls.credential_names.is_empty();
    if (mode == "PASSTHROUGH" || mode == "AUTO_PASSTHROUGH") && has_files {
        r.warn(
            base,
            format!("{mode} mode does not use certificates, they will be ignored"),
        );
    }
    let sources = usize::from(set(&tls.server_certificate) && set(&tls.private_key))
        + usize::from(set(&tls.credential_name))
        + usize::from(!tls.credential_names.is_empty())
        + usize::from(!tls.tls_certificates.is_empty());
    if sources > 1 {
        r.error(
            base,
            "only one of credentialName, credentialNames, serverCertificate/privateKey or \
             tlsCertificates should be specified",
        );
    }
    let terminating = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    // Credentials fetched from a Secret replace the certificate files.
    let credential = set(&tls.credential_name) || !tls.credential_names.is_empty();
    if terminating && !credential {
        let label = if mode == "SIMPLE" { "SIMPLE" } else { "MUTUAL" };
        if mode != "SIMPLE" && !set(&tls.ca_certificates) {
            r.error(
                format!("{base}.caCertificates"),
                "MUTUAL TLS requires a client CA bundle",
            );
        }
        if tls.tls_certificates.is_empty() {
            if !set(&tls.server_certificate) {
                r.error(
                    format!("{base}.serverCertificate"),
                    format!("{label} TLS requires a server certificate"),
                );
            }
            if !set(&tls.private_key) {
                r.error(
                    format!("{base}.privateKey"),
                    format!("{label} TLS requires a private key"),
                );
            }
        }
        for (i, cert) in tls.tls_certificates.iter().enumerate() {
            let path = format!("{base}.tlsCertificates[{i}]");
            if !set(&cert.server_certificate) {
                r.error(
                    format!("{path}.serverCertificate"),
                    format!("{label} TLS requires a server certificate"),
                );
            }
            if !set(&cert.private_key) {
                r.error(
                    format!("{path}.privateKey"),
                    format!("{label} TLS requires a private key"),
                );
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            r.error(
                format!("{base}.caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == "SIMPLE" {
            r.error(
                format!("{base}.caCrl"),
                "CRL is not supported with SIMPLE TLS",
            );
        }
    }
}
