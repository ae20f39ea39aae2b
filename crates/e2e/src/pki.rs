//! A throw-away PKI made with `openssl`: a test CA and a server certificate for the fake public
//! hosts, so HTTPS works end to end with `curl --cacert`. [`Pki::issue`] signs further leaves
//! with the same CA (more server certificates, client certificates for mutual TLS).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::prereq::tools;
use crate::process::run_checked;

/// Files of a CA and one server certificate signed by it (all PEM, world-readable so the proxy user
/// can read them, e.g. as a DestinationRule `caCertificates`).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// One certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The subject's common name.
    pub cn: String,
    /// The serial number as given to openssl (decimal).
    pub serial: u64,
}

/// What a leaf certificate is for (`extendedKeyUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl Pki {
    /// Makes `<dir>/<name>-ca.pem` and a server certificate for `hosts` (all as SANs).
    pub fn generate(dir: &Path, name: &str, hosts: &[&str]) -> Pki {
        let (ca_cert, ca_key) = make_ca(dir, name);
        let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        let leaf = sign_leaf(
            dir,
            &format!("{name}-server"),
            (&ca_cert, &ca_key),
            hosts.first().copied().unwrap_or("localhost"),
            &sans,
            Usage::Server,
            2,
        );
        Pki {
            ca_cert,
            ca_key,
            server_cert: leaf.cert,
            server_key: leaf.key,
        }
    }

    /// The CA of this PKI, to sign more leaves with ([`Ca::issue`]).
    pub fn ca(&self) -> Ca {
        Ca {
            cert: self.ca_cert.clone(),
            key: self.ca_key.clone(),
        }
    }
}

/// A test CA (PEM files) that signs leaf certificates.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// Makes `<dir>/<name>-ca.pem` and `<dir>/<name>-ca.key`, subject
    /// `O=sluice e2e, CN=sluice e2e test CA <name>`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let (cert, key) = make_ca(dir, name);
        Ca { cert, key }
    }

    /// Signs a new leaf: `<dir>/<file>.pem` and `<dir>/<file>.key`, subject
    /// `O=sluice e2e, CN=<cn>`, `sans` written as openssl wants them (`DNS:a.example.com`,
    /// `IP:10.0.0.1`), and `serial` (use different serials to tell rotated certificates apart).
    pub fn issue(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        sans: &[String],
        usage: Usage,
        serial: u64,
    ) -> Leaf {
        sign_leaf(dir, file, (&self.cert, &self.key), cn, sans, usage, serial)
    }
}

/// A self-signed EC CA: `<dir>/<name>-ca.pem`, `<dir>/<name>-ca.key`.
fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ca_cert = dir.join(format!("{name}-ca.pem"));
    let ca_key = dir.join(format!("{name}-ca.key"));
    run_checked(
        "make test CA",
        Command::new(&tools().openssl)
            .args([
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert)
            .args(["-days", "3", "-subj"])
            .arg(format!("/O=sluice e2e/CN=sluice e2e test CA {name}"))
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-addext",
                "subjectKeyIdentifier=hash",
            ]),
    );
    world_readable(&[&ca_cert, &ca_key]);
    (ca_cert, ca_key)
}

fn sign_leaf(
    dir: &Path,
    file: &str,
    (ca_cert, ca_key): (&Path, &Path),
    cn: &str,
    sans: &[String],
    usage: Usage,
    serial: u64,
) -> Leaf {
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    let csr = dir.join(format!("{file}.csr"));
    let ext = dir.join(format!("{file}.ext"));
    let openssl = &tools().openssl;
    run_checked(
        "make leaf key",
        Command::new(openssl)
            .args([
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .arg("-subj")
            .arg(format!("/O=sluice e2e/CN={cn}")),
    );
    let eku = match usage {
        Usage::Server => "serverAuth",
        Usage::Client => "clientAuth",
    };
    let mut text = format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage={eku}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    );
    if !sans.is_empty() {
        text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
    }
    std::fs::write(&ext, text).unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
    run_checked(
        "sign leaf certificate",
        Command::new(openssl)
            .args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(ca_cert)
            .arg("-CAkey")
            .arg(ca_key)
            .arg("-set_serial")
            .arg(serial.to_string())
            .args(["-days", "3", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    world_readable(&[&cert, &key]);
    Leaf {
        cert,
        key,
        cn: cn.to_string(),
        serial,
    }
}

fn world_readable(paths: &[&Path]) {
    for p in paths {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644));
    }
}
