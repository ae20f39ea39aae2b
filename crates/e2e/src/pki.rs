//! A throw-away PKI made with `openssl`: a test CA and a server certificate for the fake public
//! hosts, so HTTPS works end to end with `curl --cacert`.

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

impl Pki {
    /// Makes `<dir>/<name>-ca.pem` and a server certificate for `hosts` (all as SANs).
    pub fn generate(dir: &Path, name: &str, hosts: &[&str]) -> Pki {
        let ca_cert = dir.join(format!("{name}-ca.pem"));
        let ca_key = dir.join(format!("{name}-ca.key"));
        let server_cert = dir.join(format!("{name}-server.pem"));
        let server_key = dir.join(format!("{name}-server.key"));
        let csr = dir.join(format!("{name}-server.csr"));
        let ext = dir.join(format!("{name}-server.ext"));
        let openssl = &tools().openssl;
        run_checked(
            "make test CA",
            Command::new(openssl)
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
        run_checked(
            "make server key",
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
                .arg(&server_key)
                .arg("-out")
                .arg(&csr)
                .arg("-subj")
                .arg(format!(
                    "/O=sluice e2e/CN={}",
                    hosts.first().copied().unwrap_or("localhost")
                )),
        );
        let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n\
                 subjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
        run_checked(
            "sign server certificate",
            Command::new(openssl)
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca_cert)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-set_serial", "2", "-days", "3", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&server_cert),
        );
        for p in [&ca_cert, &ca_key, &server_cert, &server_key] {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644));
        }
        Pki {
            ca_cert,
            ca_key,
            server_cert,
            server_key,
        }
    }
}
