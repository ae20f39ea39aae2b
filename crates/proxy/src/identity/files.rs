//! The identity's files: reading the mesh root and a workload's certificate pair, and writing
//! them (`sluice ca`) so that a watching proxy never reads a half-written file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::{IdentityError, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE};
use crate::tls::{certified_key, parse_certs};

pub(super) fn load_roots(path: &Path) -> Result<RootCertStore, IdentityError> {
    let pem = read_file(path, "mesh root certificate")?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(&pem, &path.display().to_string())? {
        roots.add(cert).map_err(|e| IdentityError::Invalid {
            path: path.to_path_buf(),
            message: format!("unusable root certificate: {e}"),
        })?;
    }
    Ok(roots)
}

pub(super) fn load_pair(
    chain_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, IdentityError> {
    let chain = read_file(chain_path, "workload certificate")?;
    let key = read_file(key_path, "workload key")?;
    Ok(certified_key(
        &chain,
        &chain_path.display().to_string(),
        &key,
        &key_path.display().to_string(),
        provider,
    )?)
}

pub(super) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the mesh root (`root-cert.pem`, `root-key.pem` with mode 0600) into `dir`, creating
/// it. Existing files are replaced only with `overwrite`.
pub fn write_root_files(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    overwrite: bool,
) -> Result<(), IdentityError> {
    let cert_path = dir.join(ROOT_CERT_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    if !overwrite {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(IdentityError::Exists { path: path.clone() });
            }
        }
    }
    create_dir(dir)?;
    write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)
}

/// Writes a workload identity (`cert-chain.pem`, `key.pem` with mode 0600, `root-cert.pem`)
/// into `dir`, creating it. Each file is replaced by a rename, the certificate chain last, so
/// a watching proxy never reads a half-written file (and keeps its last good pair if it reads
/// the new key with the old certificate).
pub fn write_workload_files(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    root_pem: &str,
) -> Result<(), IdentityError> {
    create_dir(dir)?;
    write_atomically(&dir.join(ROOT_CERT_FILE), root_pem.as_bytes(), 0o644)?;
    write_atomically(&dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    write_atomically(&dir.join(CERT_CHAIN_FILE), cert_pem.as_bytes(), 0o644)
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let write_err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}
