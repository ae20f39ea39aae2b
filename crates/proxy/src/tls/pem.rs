//! PEM files: certificate chains and private keys read and checked to belong together, and the
//! stamps that tell a watched file changed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsSetupError;

/// What tells a file changed: a new modification time or size, or (Kubernetes mounts, `mv`)
/// a new inode behind the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    /// `None` when the file cannot be stat'ed (a change too, once it reappears).
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A certificate chain and its private key, checked to belong together.
pub(crate) fn certified_key(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let chain = parse_certs(cert_pem, cert_origin)?;
    let key = parse_key(key_pem, key_origin)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsSetupError::Invalid {
        path: key_origin.to_string(),
        message: match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("the private key does not match the certificate {cert_origin}")
            }
            e => format!("unusable private key: {e}"),
        },
    })
}

/// Reads a PEM file; `what` names the setting it comes from, for the error.
pub(crate) fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM bundle (other blocks are skipped); at least one.
pub(crate) fn parse_certs(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Invalid {
            path: origin.to_string(),
            message: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: origin.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError::Invalid {
        path: origin.to_string(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
            }
            e => format!("malformed PEM private key: {e}"),
        },
    })
}

/// [`read_pem`] then [`parse_certs`].
pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    parse_certs(&read_pem(path, what)?, &path.display().to_string())
}

/// [`read_pem`] then [`parse_key`].
pub(crate) fn read_key(
    path: &Path,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    parse_key(&read_pem(path, what)?, &path.display().to_string())
}
