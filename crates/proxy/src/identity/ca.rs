//! Issuing certificates: the mesh CA (root certificate and key) that signs workload
//! certificates, and new mesh roots (`sluice ca init`).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::files::read_file;
use super::{IdentityError, ROOT_CERT_FILE, ROOT_KEY_FILE};
use crate::tls::parse_certs;

/// How far back a new certificate's validity starts, for peers whose clocks lag a little.
const BACKDATE: Duration = Duration::from_secs(60);

/// A mesh CA that can sign workload certificates: the root certificate and its key.
pub struct MeshCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root_pem: String,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

/// A newly issued workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf certificate (the root is the trust anchor, not part of the chain).
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl MeshCa {
    /// Reads `root-cert.pem` and `root-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<MeshCa, IdentityError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let cert = read_file(&cert_path, "mesh root certificate")?;
        let key = read_file(&key_path, "mesh root key")?;
        let cert = String::from_utf8_lossy(&cert);
        let key = String::from_utf8_lossy(&key);
        Self::from_pem_parts(&cert, &key).map_err(|(which, message)| IdentityError::Invalid {
            path: if which == Part::Key {
                key_path
            } else {
                cert_path
            },
            message,
        })
    }

    /// A CA from PEM text: the root certificate (a bundle is fine: the certificate matching the
    /// key signs) and its PKCS#8 private key.
    pub fn from_pem(root_cert_pem: &str, root_key_pem: &str) -> Result<MeshCa, IdentityError> {
        Self::from_pem_parts(root_cert_pem, root_key_pem).map_err(|(which, message)| {
            IdentityError::BadInput {
                what: if which == Part::Key {
                    "mesh root key"
                } else {
                    "mesh root certificate"
                },
                message,
            }
        })
    }

    fn from_pem_parts(root_cert_pem: &str, root_key_pem: &str) -> Result<MeshCa, (Part, String)> {
        let key = rcgen::KeyPair::from_pem(root_key_pem).map_err(|e| {
            let hint = if root_key_pem.contains("BEGIN RSA PRIVATE KEY")
                || root_key_pem.contains("BEGIN EC PRIVATE KEY")
            {
                " (a PKCS#8 key is needed: openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8)"
            } else {
                ""
            };
            (Part::Key, format!("unusable private key: {e}{hint}"))
        })?;
        let certs = parse_certs(root_cert_pem.as_bytes(), "root")
            .map_err(|e| (Part::Cert, strip_origin(&e.to_string(), "root")))?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let root = certs
            .iter()
            .find(|der| {
                x509_parser::parse_x509_certificate(der)
                    .is_ok_and(|(_, cert)| cert.public_key().raw == spki.as_slice())
            })
            .ok_or((
                Part::Key,
                "this key belongs to none of the root certificates".to_string(),
            ))?;
        let issuer = rcgen::Issuer::from_ca_cert_der(root, key)
            .map_err(|e| (Part::Cert, format!("unusable root certificate: {e}")))?;
        Ok(MeshCa {
            issuer,
            root_pem: root_cert_pem.to_string(),
        })
    }

    /// The root certificate(s), PEM, as read.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A workload certificate for `spiffe_id`: a new EC P-256 key, the SPIFFE ID as the only
    /// (critical) SAN and an empty subject as Istio issues them, EKU server and client auth,
    /// valid from a minute ago for `ttl`.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> Result<IssuedCert, IdentityError> {
        let fail = |message: String| IdentityError::Issue {
            subject: spiffe_id.to_string(),
            message,
        };
        let (params, not_after) = workload_params(spiffe_id, ttl)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Signs a PEM certificate request (its signature checked: the caller holds the key) as a
    /// workload certificate for `spiffe_id`, exactly as [`MeshCa::issue`] would make it: only
    /// the request's public key is used, never the subject or SANs it asks for.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        let fail = |message: String| IdentityError::Issue {
            subject: spiffe_id.to_string(),
            message,
        };
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| fail(format!("the certificate request: {e}")))?;
        csr.params = workload_params(spiffe_id, ttl)?.0;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        Ok(cert.pem())
    }
}

/// The parameters of a workload certificate for `spiffe_id` valid for `ttl`, and its end.
fn workload_params(
    spiffe_id: &str,
    ttl: Duration,
) -> Result<(rcgen::CertificateParams, SystemTime), IdentityError> {
    let now = SystemTime::now();
    let not_after = now + ttl;
    let mut params = spiffe_params(spiffe_id)?;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok((params, not_after))
}

/// Parameters with an empty subject and `spiffe_id` as the only SAN, as Istio's workload
/// certificates and certificate requests have.
fn spiffe_params(spiffe_id: &str) -> Result<rcgen::CertificateParams, IdentityError> {
    let fail = |message: String| IdentityError::Issue {
        subject: spiffe_id.to_string(),
        message,
    };
    if !spiffe_id.starts_with("spiffe://") {
        return Err(fail("a SPIFFE ID starts with spiffe://".into()));
    }
    let uri = rcgen::string::Ia5String::try_from(spiffe_id)
        .map_err(|e| fail(format!("not an ASCII URI: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    Ok(params)
}

/// A new key and a PEM certificate request for `spiffe_id` signed with it (what a proxy sends
/// the certificate service): `(csr_pem, key_pem)`.
pub fn certificate_request(spiffe_id: &str) -> Result<(String, String), IdentityError> {
    let fail = |message: String| IdentityError::Issue {
        subject: spiffe_id.to_string(),
        message,
    };
    let params = spiffe_params(spiffe_id)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| fail(e.to_string()))?;
    Ok((csr, key.serialize_pem()))
}

#[derive(PartialEq, Eq)]
enum Part {
    Cert,
    Key,
}

pub(super) fn strip_origin(message: &str, origin: &str) -> String {
    message
        .strip_prefix(origin)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message)
        .to_string()
}

/// A positive 128-bit serial number.
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// A new mesh root: a self-signed CA certificate (EC P-256, CN "sluice mesh root", O the trust
/// domain, valid from a minute ago for `ttl`) and its PKCS#8 key, both PEM.
pub fn create_root(trust_domain: &str, ttl: Duration) -> Result<(String, String), IdentityError> {
    let fail = |message: String| IdentityError::Issue {
        subject: "the mesh root".into(),
        message,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let now = SystemTime::now();
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, trust_domain);
    name.push(rcgen::DnType::CommonName, "sluice mesh root");
    params.distinguished_name = name;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(random_serial());
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A workload certificate for `spiffe_id` signed by the root: `(cert_pem, key_pem)`.
pub fn issue_workload_cert(
    root_cert_pem: &str,
    root_key_pem: &str,
    spiffe_id: &str,
    ttl: Duration,
) -> Result<(String, String), IdentityError> {
    let issued = MeshCa::from_pem(root_cert_pem, root_key_pem)?.issue(spiffe_id, ttl)?;
    Ok((issued.cert_pem, issued.key_pem))
}
