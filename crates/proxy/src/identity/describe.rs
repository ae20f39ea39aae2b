//! Describing certificates (`sluice ca show`, the admin API's `/certs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ca::strip_origin;
use crate::tls::parse_certs;

/// What `sluice ca show` prints about a certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// RFC 4514-style, e.g. `O=cluster.local, CN=sluice mesh root`; empty for workload certs.
    pub subject: String,
    pub issuer: String,
    /// The first organization (O) of the subject; the trust domain of a `sluice ca` root.
    pub organization: Option<String>,
    pub spiffe_id: Option<String>,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// Hex, colon-separated.
    pub serial: String,
}

/// Every certificate of a PEM bundle, described. Errors say what is wrong (the caller names
/// the file).
pub fn describe_certs(pem: &[u8]) -> Result<Vec<CertSummary>, String> {
    let certs = parse_certs(pem, "").map_err(|e| strip_origin(&e.to_string(), ""))?;
    certs.iter().map(|der| describe_der(der)).collect()
}

/// One DER certificate, described.
pub fn describe_der(der: &[u8]) -> Result<CertSummary, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(uri) => uri_sans.push(uri.to_string()),
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    dns_sans.push(dns.to_string())
                }
                _ => {}
            }
        }
    }
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let organization = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string);
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        organization,
        spiffe_id: uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .cloned(),
        uri_sans,
        dns_sans,
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
        is_ca: cert.is_ca(),
        serial: cert.raw_serial_as_string(),
    })
}
