//! The resources of the egress-gateway scenarios (seed 002, "Getting traffic out of the mesh"):
//! the seed's YAML exactly as written (the decoded fixtures are
//! `crates/api/tests/fixtures/seeds/002-*.yaml`; a unit test keeps them equal), and the
//! `istio-system` side that the seed's course environment had prepared ("The exit point for httpbin
//! and needed routes to the istio-egressgateway have already been created in the istio-system
//! namespace"), written the way the seed's examples are.
//!
//! The seed's resources carry no `namespace:`; the tests put them into the student's namespace
//! with [`crate::config::in_namespace`], as `kubectl apply -n student1` does.

/// The student's namespace in the seed (`$STUDENT_NS`).
pub const STUDENT_NS: &str = "student1";
/// Where the egress gateway and its configuration live.
pub const ISTIO_SYSTEM: &str = "istio-system";
/// `--labels` of the egress gateway (the labels of Istio's `istio-egressgateway` pods).
pub const EGRESS_LABELS: &str = "istio=egressgateway,app=istio-egressgateway";
/// The egress gateway's Kubernetes Service.
pub const EGRESS_SERVICE: &str = "istio-egressgateway";
/// Its full name, as the seed's VirtualService writes it.
pub const EGRESS_FQDN: &str = "istio-egressgateway.istio-system.svc.cluster.local";

/// Seed 002: the example ServiceEntry (`external-api.example.com`, exported to its namespace only).
pub const SE_EXTERNAL_API: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: external-api
spec:
  hosts:
  - external-api.example.com
  exportTo:
  - \".\"
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
";

/// Seed 002: the example egress Gateway (selector `app: istio-egressgateway`,
/// `istio: egressgateway`; HTTP 80 for `external-api.example.com`).
pub const GW_MYAPP_EGRESSGATEWAY: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: myapp-egressgateway
spec:
  selector:
    app: istio-egressgateway
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - external-api.example.com
";

/// Seed 002: the example VirtualService sending mesh traffic for `external-api.example.com` to the
/// egress gateway.
pub const VS_EXTERNAL_API_ROUTE: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: external-api-route
spec:
  hosts:
  - external-api.example.com
  exportTo:
  - \".\"
  gateways:
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port:
          number: 80
      weight: 100
";

/// Seed 002: `api-egress-se.yaml`, the ServiceEntry for httpbin.org (exportTo ".").
pub const SE_HTTPBIN: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin.org
  exportTo:
  - \".\"
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
";

/// Seed 002: `api-egress-vs.yaml`, first version: `timeout: 0.5s`.
pub const VS_HTTPBIN_TIMEOUT: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin.org
  exportTo:
  - \".\"
  http:
  - timeout: 0.5s
    route:
      - destination:
          host: httpbin.org
        weight: 100
";

/// Seed 002: `api-egress-vs.yaml`, second version: port 80 from the mesh to the egress gateway.
pub const VS_HTTPBIN_EGRESSGATEWAY: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin.org
  exportTo:
  - \".\"
  gateways:
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port:
          number: 80
      weight: 100
";

/// The seed's example Gateway for other hosts, in `istio-system`, as the course environment's
/// "exit point for httpbin" would be: [`GW_MYAPP_EGRESSGATEWAY`] with its host replaced and its
/// name `<name>`.
pub fn myapp_style_gateway(name: &str, host: &str) -> String {
    GW_MYAPP_EGRESSGATEWAY
        .replace("external-api.example.com", host)
        .replace(
            "  name: myapp-egressgateway\n",
            &format!("  name: {name}\n  namespace: {ISTIO_SYSTEM}\n"),
        )
}

/// A Gateway in `istio-system` selecting the egress gateway, with one server.
/// `tls_mode`: `None` for plain HTTP, else e.g. `PASSTHROUGH`, `ISTIO_MUTUAL`.
pub fn egress_gateway(
    name: &str,
    port: u16,
    port_name: &str,
    protocol: &str,
    hosts: &[&str],
    tls_mode: Option<&str>,
) -> String {
    let hosts: String = hosts.iter().map(|h| format!("    - \"{h}\"\n")).collect();
    let tls = tls_mode
        .map(|m| format!("    tls:\n      mode: {m}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: {name}
  namespace: {ISTIO_SYSTEM}
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: {port}
      name: {port_name}
      protocol: {protocol}
    hosts:
{hosts}{tls}"
    )
}

/// The gateway-side VirtualService (in `istio-system`, exported there only) bound to `gateway`:
/// every HTTP request for `host` goes to `dest_host:dest_port`.
pub fn gateway_http_vs(
    name: &str,
    gateway: &str,
    host: &str,
    dest_host: &str,
    dest_port: u16,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {name}
  namespace: {ISTIO_SYSTEM}
spec:
  hosts:
  - \"{host}\"
  exportTo:
  - \".\"
  gateways:
  - {gateway}
  http:
  - route:
    - destination:
        host: \"{dest_host}\"
        port:
          number: {dest_port}
"
    )
}

/// A VirtualService with one `tls` route: connections on `port` whose SNI is one of `sni_hosts` go
/// to `dest_host:dest_port`. `gateways` is `["mesh"]` for the sidecar hop or the Gateway's name
/// for the gateway hop; `namespace` is where it lives (exported there only).
#[allow(clippy::too_many_arguments)]
pub fn tls_vs(
    name: &str,
    namespace: &str,
    hosts: &[&str],
    gateways: &[&str],
    port: u16,
    sni_hosts: &[&str],
    dest_host: &str,
    dest_port: u16,
) -> String {
    let list = |items: &[&str], indent: &str| -> String {
        items
            .iter()
            .map(|h| format!("{indent}- \"{h}\"\n"))
            .collect()
    };
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts:
{hosts}  exportTo:
  - \".\"
  gateways:
{gateways}  tls:
  - match:
    - port: {port}
      sniHosts:
{snis}    route:
    - destination:
        host: \"{dest_host}\"
        port:
          number: {dest_port}
",
        hosts = list(hosts, "  "),
        gateways = list(gateways, "  "),
        snis = list(sni_hosts, "      "),
    )
}

/// A ServiceEntry in `namespace`, exported to it only, for `hosts` with one port.
pub fn service_entry(
    name: &str,
    namespace: &str,
    hosts: &[&str],
    port: u16,
    port_name: &str,
    protocol: &str,
    resolution: &str,
) -> String {
    let hosts: String = hosts.iter().map(|h| format!("  - \"{h}\"\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts:
{hosts}  exportTo:
  - \".\"
  location: MESH_EXTERNAL
  ports:
  - number: {port}
    name: {port_name}
    protocol: {protocol}
  resolution: {resolution}
"
    )
}

/// The egress gateway's Kubernetes Service (`istio-egressgateway` in `istio-system`, ports 80
/// `http2`, 443 `https` and 8443 `tls` as Istio's chart names them, selector
/// `istio: egressgateway`) and the WorkloadEntry of its one pod at `address`.
pub fn egress_service_yaml(cluster_ip: std::net::Ipv4Addr, address: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {EGRESS_SERVICE}
  namespace: {ISTIO_SYSTEM}
  labels:
    app: istio-egressgateway
    istio: egressgateway
spec:
  clusterIP: {cluster_ip}
  selector:
    istio: egressgateway
  ports:
  - name: http2
    port: 80
    targetPort: 80
  - name: https
    port: 443
    targetPort: 443
  - name: tls
    port: 8443
    targetPort: 8443
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: istio-egressgateway-1
  namespace: {ISTIO_SYSTEM}
spec:
  address: {address}
  serviceAccount: istio-egressgateway-service-account
  labels:
    app: istio-egressgateway
    istio: egressgateway
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_produce_the_expected_shapes() {
        let g = myapp_style_gateway("httpbin-egressgateway", "httpbin.org");
        assert!(
            g.contains("  name: httpbin-egressgateway\n  namespace: istio-system\n"),
            "{g}"
        );
        assert!(g.contains("    - httpbin.org\n"), "{g}");
        assert!(g.contains("    istio: egressgateway\n"), "{g}");
        let t = tls_vs(
            "x",
            "student1",
            &["*.example.com"],
            &["mesh"],
            443,
            &["*.example.com"],
            EGRESS_FQDN,
            443,
        );
        assert!(
            t.contains("  gateways:\n  - \"mesh\"\n  tls:\n  - match:\n    - port: 443\n      sniHosts:\n      - \"*.example.com\"\n"),
            "{t}"
        );
        let gw = egress_gateway(
            "g",
            443,
            "https",
            "HTTPS",
            &["httpbin.org"],
            Some("ISTIO_MUTUAL"),
        );
        assert!(
            gw.ends_with("    - \"httpbin.org\"\n    tls:\n      mode: ISTIO_MUTUAL\n"),
            "{gw}"
        );
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
            (
                "002-1-serviceentry-external-api.yaml",
                super::SE_EXTERNAL_API,
            ),
            (
                "002-2-gateway-myapp-egressgateway.yaml",
                super::GW_MYAPP_EGRESSGATEWAY,
            ),
            (
                "002-3-virtualservice-external-api-route.yaml",
                super::VS_EXTERNAL_API_ROUTE,
            ),
            ("002-4-serviceentry-httpbin.yaml", super::SE_HTTPBIN),
            (
                "002-5-virtualservice-httpbin-timeout.yaml",
                super::VS_HTTPBIN_TIMEOUT,
            ),
            (
                "002-6-virtualservice-httpbin-egressgateway.yaml",
                super::VS_HTTPBIN_EGRESSGATEWAY,
            ),
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
