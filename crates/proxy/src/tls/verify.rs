//! Peer certificates: client-certificate verification with a CA bundle and `subjectAltNames`, the
//! error a SAN mismatch reports, and the names a peer certificate is logged by.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use sluice_model::gateway::{ServerTls, ServerTlsMode};

use super::{parse_certs, TlsSetupError};

/// Verifies client certificates against the CA bundle; OPTIONAL_MUTUAL also lets clients
/// without one in; `subjectAltNames` further restricts whose certificates are accepted.
pub(crate) fn client_verifier(
    tls: &ServerTls,
    ca_pem: &[u8],
    ca_origin: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, ca_origin)? {
        roots.add(cert).map_err(|e| TlsSetupError::Invalid {
            path: ca_origin.to_string(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if tls.mode == ServerTlsMode::OptionalMutual {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsSetupError::Invalid {
        path: ca_origin.to_string(),
        message: e.to_string(),
    })?;
    if tls.subject_alt_names.is_empty() {
        return Ok(verifier);
    }
    Ok(Arc::new(SanRestricted {
        inner: verifier,
        allowed: tls.subject_alt_names.clone(),
    }))
}

/// `subjectAltNames`: a verified client certificate must carry one of these as a URI or DNS SAN
/// (exact match, DNS without regard to case), as Envoy's `match_typed_subject_alt_names`.
#[derive(Debug)]
struct SanRestricted {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SanRestricted {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let matches = cert
            .valid_uri_names()
            .any(|uri| self.allowed.iter().any(|a| a == uri))
            || cert
                .valid_dns_names()
                .any(|dns| self.allowed.iter().any(|a| a.eq_ignore_ascii_case(dns)));
        if matches {
            return Ok(verified);
        }
        let presented: Vec<&str> = cert
            .valid_uri_names()
            .chain(cert.valid_dns_names())
            .collect();
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SanMismatch(format!(
                "client certificate names {presented:?} match none of subjectAltNames {:?}",
                self.allowed
            )))),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate whose SANs are not the expected ones (the message says which).
#[derive(Debug)]
pub(crate) struct SanMismatch(pub(crate) String);

impl std::fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SanMismatch {}

/// The client certificate's identity for logs (`%DOWNSTREAM_PEER_URI_SAN%`): its first URI SAN,
/// else its first DNS SAN, else its subject common name. `None` without a client certificate.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    if let Some(uri) = cert.valid_uri_names().next() {
        return Some(uri.to_string());
    }
    if let Some(dns) = cert.valid_dns_names().next() {
        return Some(dns.to_string());
    }
    subject_common_name(cert.subject())
}

/// The first CN in a DER X.501 Name (the contents of its SEQUENCE: SETs of
/// SEQUENCE { OID, value }).
fn subject_common_name(mut name: &[u8]) -> Option<String> {
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while let Some((tag, set, rest)) = der_next(name) {
        name = rest;
        if tag != 0x31 {
            continue;
        }
        let mut attributes = set;
        while let Some((tag, attribute, rest)) = der_next(attributes) {
            attributes = rest;
            if tag != 0x30 {
                continue;
            }
            let (oid_tag, oid, value) = der_next(attribute)?;
            if oid_tag != 0x06 || oid != OID_COMMON_NAME {
                continue;
            }
            let (string_tag, value, _) = der_next(value)?;
            return match string_tag {
                // BMPString: UTF-16BE.
                0x1e => {
                    let units: Vec<u16> = value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16(&units).ok()
                }
                // UTF8String, PrintableString, IA5String, TeletexString (ASCII in practice).
                _ => String::from_utf8(value.to_vec()).ok(),
            };
        }
    }
    None
}

/// One DER TLV: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_name_common_name() {
        // SET { SEQUENCE { OID 2.5.4.10, "o" } }, SET { SEQUENCE { OID 2.5.4.3, UTF8 "cn" } }
        let name = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x01, b'o', 0x31, 0x0b,
            0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'c', b'n',
        ];
        assert_eq!(subject_common_name(&name).as_deref(), Some("cn"));
        assert_eq!(subject_common_name(&name[..12]), None);
        assert_eq!(subject_common_name(&name[..20]), None);
    }
}
