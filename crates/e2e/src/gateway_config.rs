//! The resources of the ingress-gateway scenarios (seed 003, "Control Ingress Traffic"): the seed's
//! YAML exactly as written (the decoded fixtures are `crates/api/tests/fixtures/seeds/003-*.yaml`),
//! and the Kubernetes objects the seed creates with commands (`kubectl create secret tls`, the
//! httpbin sample's Service) as the YAML those commands make.

use std::net::Ipv4Addr;
use std::path::Path;

/// Seed 003: the Gateway, as written (the certificate paths are `/tmp/tls.crt` and `/tmp/tls.key`;
/// [`seed003_gateway`] points them at a test's files).
pub const GATEWAY_HTTPBIN: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  servers:
  - port:
      number: 80
      name: http
  - port:
      number: 443
      name: https
    tls:
      mode: SIMPLE
      serverCertificate: /tmp/tls.crt
      privateKey: /tmp/tls.key
";

/// Seed 003: the VirtualService for /status and /delay, in the pre-0.8 form (`destination.name`).
pub const VS_HTTPBIN: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  gateways:
  - httpbin-gateway
  http:
  - match:
      uri:
        prefix: /status
    route:
    - destination:
        port:
          number: 8000
        name: httpbin
  - match:
      uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        name: httpbin
";

/// Seed 003: the simple Ingress (extensions/v1beta1, class annotation `istio`).
pub const INGRESS_SIMPLE: &str = "\
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: simple-ingress
  annotations:
    kubernetes.io/ingress.class: istio
spec:
  rules:
  - http:
      paths:
      - path: /status/*
        backend:
          serviceName: httpbin
          servicePort: 8000
      - path: /delay/*
        backend:
          serviceName: httpbin
          servicePort: 8000
";

/// Seed 003: the secure Ingress (the same rules with a `tls` section naming the Secret).
pub const INGRESS_SECURE: &str = "\
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: secure-ingress
  annotations:
    kubernetes.io/ingress.class: istio
spec:
  tls:
    - secretName: istio-ingress-certs # currently ignored
  rules:
  - http:
      paths:
      - path: /status/*
        backend:
          serviceName: httpbin
          servicePort: 8000
      - path: /delay/*
        backend:
          serviceName: httpbin
          servicePort: 8000
";

/// The name of the Secret seed 003 creates (`kubectl create -n istio-system secret tls …`).
pub const INGRESS_SECRET: &str = "istio-ingress-certs";

/// Seed 003's Gateway with its certificate files replaced by `cert` and `key` (the seed makes
/// them in `/tmp`; a test uses its own).
pub fn seed003_gateway(cert: &Path, key: &Path) -> String {
    GATEWAY_HTTPBIN
        .replace("/tmp/tls.crt", &cert.to_string_lossy())
        .replace("/tmp/tls.key", &key.to_string_lossy())
}

/// What `kubectl create -n <namespace> secret tls <name> --cert <cert> --key <key>` creates:
/// a `kubernetes.io/tls` Secret with the files' bytes, base64-encoded in `data`.
pub fn tls_secret_yaml(name: &str, namespace: &str, cert: &Path, key: &Path) -> String {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: {namespace}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        base64(&read(cert)),
        base64(&read(key))
    )
}

/// Like [`tls_secret_yaml`], with the CA bundle under `ca.crt` too (Istio reads a MUTUAL server's
/// client CA from there).
pub fn tls_secret_with_ca_yaml(
    name: &str,
    namespace: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> String {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    format!(
        "{}  ca.crt: {}\n",
        tls_secret_yaml(name, namespace, cert, key),
        base64(&read(ca))
    )
}

/// A Kubernetes Service in namespace `default` (`selector: app=<app>`, one port) and the
/// WorkloadEntry of its one endpoint (`address`, labels `app=<app>`, `version=v1`), as the
/// httpbin sample deploys it; `cluster_ip` is an address no interface owns (a gateway routes to
/// endpoints, never to the cluster IP).
pub fn service_with_endpoint_yaml(
    app: &str,
    cluster_ip: Ipv4Addr,
    port_name: &str,
    port: u16,
    address: Ipv4Addr,
) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {app}
  namespace: default
  labels:
    app: {app}
spec:
  clusterIP: {cluster_ip}
  selector:
    app: {app}
  ports:
  - name: {port_name}
    port: {port}
    targetPort: {port}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {app}-v1
  namespace: default
spec:
  address: {address}
  labels:
    app: {app}
    version: v1
"
    )
}

/// Standard base64 with padding (RFC 4648), as Kubernetes Secrets hold their `data`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain:?}");
        }
        // The seed fixture's placeholder certificate.
        assert_eq!(
            base64(b"-----BEGIN CERTIFICATE-----\nplaceholder\n-----END CERTIFICATE-----\n"),
            "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCnBsYWNlaG9sZGVyCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K"
        );
    }

    #[test]
    fn seed_gateway_gets_the_test_files() {
        let y = seed003_gateway(Path::new("/x/a.pem"), Path::new("/x/a.key"));
        assert!(y.contains("serverCertificate: /x/a.pem\n"));
        assert!(y.contains("privateKey: /x/a.key\n"));
        assert!(!y.contains("/tmp/"));
    }
}

#[cfg(test)]
mod seed_fixtures {
    /// The seed's YAML here is the fixture's, byte for byte (minus the fixture's leading comments).
    #[test]
    fn constants_are_the_seed_fixtures() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/tests/fixtures/seeds");
        for (file, ours) in [
            ("003-1-gateway-httpbin-gateway.yaml", super::GATEWAY_HTTPBIN),
            ("003-2-virtualservice-httpbin.yaml", super::VS_HTTPBIN),
            ("003-3-ingress-simple-ingress.yaml", super::INGRESS_SIMPLE),
            ("003-5-ingress-secure-ingress.yaml", super::INGRESS_SECURE),
        ] {
            let path = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else {
                panic!("the seed fixture {} is missing", path.display());
            };
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(body, ours, "{file} differs from the e2e copy");
        }
    }
}
