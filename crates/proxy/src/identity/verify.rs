//! What this proxy presents and accepts at handshake time: the current certificate (served to
//! servers and clients alike), the mesh trust bundle, and the verifiers that check peers against
//! it (chain to the mesh root, expected SPIFFE IDs).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::IdentityError;
use crate::tls::SanMismatch;

/// Serves whatever certificate is current, to servers and clients alike.
#[derive(Debug)]
pub(super) struct CurrentCert {
    pub(super) current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The mesh trust bundle and the client verifiers built from it, swapped together.
#[derive(Debug)]
pub(super) struct Trust {
    pub(super) current: ArcSwap<TrustState>,
}

#[derive(Debug)]
pub(super) struct TrustState {
    roots: Arc<RootCertStore>,
    client_required: Arc<dyn ClientCertVerifier>,
    client_optional: Arc<dyn ClientCertVerifier>,
}

impl TrustState {
    pub(super) fn new(
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
        origin: &Path,
    ) -> Result<TrustState, IdentityError> {
        let roots = Arc::new(roots);
        let invalid = |e: rustls::server::VerifierBuilderError| IdentityError::Invalid {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        let client_required =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(invalid)?;
        let client_optional =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(invalid)?;
        Ok(TrustState {
            roots,
            client_required,
            client_optional,
        })
    }
}

/// Chain to the mesh root (WebPKI semantics: validity, EKU serverAuth, signatures) and, when
/// expected, a URI SAN among `expected_sans`; no DNS-name check.
#[derive(Debug)]
pub(super) struct MeshServerVerifier {
    pub(super) trust: Arc<Trust>,
    pub(super) expected_sans: Vec<String>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.trust.current.load().roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.expected_sans.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if cert
            .valid_uri_names()
            .any(|uri| self.expected_sans.iter().any(|s| s == uri))
        {
            return Ok(ServerCertVerified::assertion());
        }
        let presented: Vec<&str> = cert.valid_uri_names().collect();
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SanMismatch(format!(
                "server certificate URI SANs {presented:?} match none of the expected {:?}",
                self.expected_sans
            )))),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate from the mesh root (required, or optional), through the current
/// trust bundle.
#[derive(Debug)]
pub(super) struct MeshClientVerifier {
    pub(super) trust: Arc<Trust>,
    pub(super) optional: bool,
}

impl MeshClientVerifier {
    fn with<R>(&self, f: impl FnOnce(&dyn ClientCertVerifier) -> R) -> R {
        let state = self.trust.current.load();
        if self.optional {
            f(state.client_optional.as_ref())
        } else {
            f(state.client_required.as_ref())
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    /// No CA names in the CertificateRequest: every mesh client has exactly one certificate,
    /// and the bundle may change under a config that lives on.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.with(|v| v.verify_client_cert(end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.with(|v| v.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.with(|v| v.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.with(|v| v.supported_verify_schemes())
    }
}
