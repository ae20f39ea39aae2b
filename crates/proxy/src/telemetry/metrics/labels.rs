//! The label sets of Istio's standard metrics, in the order and with the escaping Istio's stats
//! filter uses, and how they hash for the series cache.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use sluice_model::Service;

const UNKNOWN: &str = "unknown";

/// Which side of the connection reports the metric (`reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: an outbound sidecar or a gateway.
    Source,
    /// The server side: an inbound sidecar.
    Destination,
    /// An ambient waypoint.
    Waypoint,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// The `request_protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// HTTP/1.x or HTTP/2 (not gRPC).
    Http,
    /// gRPC (content-type `application/grpc…`).
    Grpc,
    /// Raw TCP or TLS passthrough.
    Tcp,
}

impl RequestProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// The `connection_security_policy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// The server saw a peer certificate and presented its own (mTLS).
    MutualTls,
    /// Plaintext (or one-way TLS) at the server.
    None,
    /// What the source side reports: it cannot know the server's view.
    Unknown,
}

impl SecurityPolicy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
            SecurityPolicy::Unknown => UNKNOWN,
        }
    }
}

/// The identity labels of one workload (source or destination peer). Build one per peer and share it
/// behind an `Arc`: per-request label sets then cost a few reference-count increments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// `*_workload`, e.g. `productpage-v1`.
    pub workload: Arc<str>,
    /// `*_workload_namespace`.
    pub workload_namespace: Arc<str>,
    /// `*_principal`, e.g. `spiffe://cluster.local/ns/default/sa/bookinfo-productpage`.
    pub principal: Arc<str>,
    /// `*_app` (the `app` label).
    pub app: Arc<str>,
    /// `*_version` (the `version` label).
    pub version: Arc<str>,
    /// `*_canonical_service`.
    pub canonical_service: Arc<str>,
    /// `*_canonical_revision`.
    pub canonical_revision: Arc<str>,
    /// `*_cluster`.
    pub cluster: Arc<str>,
}

impl PeerLabels {
    /// Every value `unknown`: what Istio reports for a peer it has no metadata for.
    pub fn unknown() -> Self {
        let u: Arc<str> = Arc::from(UNKNOWN);
        PeerLabels {
            workload: u.clone(),
            workload_namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }
}

impl Default for PeerLabels {
    fn default() -> Self {
        Self::unknown()
    }
}

/// The destination service labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// `destination_service`: the FQDN host, e.g. `details.default.svc.cluster.local`.
    pub service: Arc<str>,
    /// `destination_service_name`: the short name, or `PassthroughCluster` / `BlackHoleCluster`.
    pub service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub service_namespace: Arc<str>,
}

impl ServiceLabels {
    /// Labels for a known service.
    pub fn new(
        service: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        namespace: impl Into<Arc<str>>,
    ) -> Self {
        ServiceLabels {
            service: service.into(),
            service_name: name.into(),
            service_namespace: namespace.into(),
        }
    }

    /// All `unknown`.
    pub fn unknown() -> Self {
        Self::new(UNKNOWN, UNKNOWN, UNKNOWN)
    }

    /// Istio's labels for a special cluster (`PassthroughCluster`, `BlackHoleCluster`, …): the cluster
    /// name as both service and service name, namespace unknown.
    pub fn special_cluster(name: &str) -> Self {
        Self::new(name, name, UNKNOWN)
    }
}

impl Default for ServiceLabels {
    fn default() -> Self {
        Self::unknown()
    }
}

/// `destination_service*` labels for a service: Istio names a ServiceEntry destination by its
/// host and a Kubernetes service by its short name.
pub fn service_labels(svc: &Service) -> ServiceLabels {
    let suffix = format!(".{}.{}", svc.namespace, sluice_model::host::CLUSTER_DOMAIN);
    let name = svc
        .hostname
        .strip_suffix(suffix.as_str())
        .unwrap_or(&svc.hostname)
        .to_string();
    ServiceLabels::new(svc.hostname.clone(), name, svc.namespace.clone())
}

/// Labels of the HTTP metrics (`istio_requests_total`, `istio_request_*`, `istio_response_bytes`).
///
/// `Hash` covers the small fields and the most selective names only (workloads, their namespaces,
/// the service); `Eq` compares everything, starting with `Arc` pointers, so equal shared label
/// parts cost no string comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_*`.
    pub source: Arc<PeerLabels>,
    /// `destination_*` workload labels.
    pub destination: Arc<PeerLabels>,
    /// `destination_service*`.
    pub destination_service: Arc<ServiceLabels>,
    /// `request_protocol` (`http` or `grpc`).
    pub request_protocol: RequestProtocol,
    /// `response_flags`: Envoy short flags, comma-joined; empty means `-`.
    pub response_flags: Cow<'static, str>,
    /// `connection_security_policy`.
    pub connection_security_policy: SecurityPolicy,
    /// `response_code`; 0 when no response was sent.
    pub response_code: u16,
    /// `grpc_response_status`; `None` prints the empty string (non-gRPC).
    pub grpc_response_status: Option<u32>,
    /// The Telemetry API's tag overrides of this series (labels removed, added or replaced);
    /// `None` for Istio's standard label set.
    pub tags: Option<Arc<TagValues>>,
}

/// Evaluated tag overrides of one series: a label with `None` is removed, one with a value is
/// set (replacing a standard label's value in place, or added after the standard labels, in
/// name order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagValues {
    edits: Vec<(Arc<str>, Option<String>)>,
}

impl TagValues {
    /// Edits in label-name order.
    pub fn new(mut edits: Vec<(Arc<str>, Option<String>)>) -> TagValues {
        edits.sort_by(|a, b| a.0.cmp(&b.0));
        TagValues { edits }
    }

    fn edit(&self, name: &str) -> Option<&Option<String>> {
        self.edits
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.edits[i].1)
    }
}

/// Writes one standard label through the series' tag overrides.
fn edited_label(
    enc: &mut LabelSetEncoder<'_>,
    tags: Option<&TagValues>,
    key: &str,
    value: &str,
) -> fmt::Result {
    match tags.and_then(|t| t.edit(key)) {
        None => label(enc, key, value),
        Some(None) => Ok(()),
        Some(Some(v)) => label(enc, key, v),
    }
}

/// The labels a series' tag overrides add beyond the standard ones.
fn added_labels(
    enc: &mut LabelSetEncoder<'_>,
    tags: Option<&TagValues>,
    standard: &[&str],
) -> fmt::Result {
    let Some(tags) = tags else { return Ok(()) };
    for (name, value) in &tags.edits {
        if let Some(v) = value.as_deref().filter(|_| !standard.contains(&&**name)) {
            label(enc, name, v)?;
        }
    }
    Ok(())
}

/// Istio's HTTP label names, in order.
const HTTP_LABEL_NAMES: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "response_code",
    "grpc_response_status",
];

/// Labels of the TCP metrics (`istio_tcp_*`): the HTTP set without `response_code` and
/// `grpc_response_status`; `request_protocol` is always `tcp`. `Hash` is partial, as for
/// [`HttpLabels`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_*`.
    pub source: Arc<PeerLabels>,
    /// `destination_*` workload labels.
    pub destination: Arc<PeerLabels>,
    /// `destination_service*`.
    pub destination_service: Arc<ServiceLabels>,
    /// `response_flags`; empty means `-`.
    pub response_flags: Cow<'static, str>,
    /// `connection_security_policy`.
    pub connection_security_policy: SecurityPolicy,
}

/// Hashes the names that tell label sets apart in practice (workloads, namespaces, service), not all
/// 19 identity strings: hashing a subset of what `Eq` compares keeps equal sets hashing alike, and
/// sets that differ only elsewhere (version, cluster, …) merely share a bucket. Label values come
/// from configuration and the registry, so a fast unkeyed hasher is fine for the series cache.
fn hash_identity<H: Hasher>(src: &PeerLabels, dst: &PeerLabels, svc: &ServiceLabels, h: &mut H) {
    src.workload.hash(h);
    src.workload_namespace.hash(h);
    dst.workload.hash(h);
    dst.workload_namespace.hash(h);
    svc.service.hash(h);
}

/// The enum labels packed into one word (each fits in two bits).
fn small_labels(reporter: Reporter, protocol: RequestProtocol, policy: SecurityPolicy) -> u64 {
    reporter as u64 | (protocol as u64) << 2 | (policy as u64) << 4
}

impl Hash for HttpLabels {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let grpc = self.grpc_response_status.map_or(0, |s| u64::from(s) + 1);
        h.write_u64(
            small_labels(
                self.reporter,
                self.request_protocol,
                self.connection_security_policy,
            ) | u64::from(self.response_code) << 8
                | grpc << 24,
        );
        self.response_flags.hash(h);
        hash_identity(
            &self.source,
            &self.destination,
            &self.destination_service,
            h,
        );
        self.tags.hash(h);
    }
}

impl Hash for TcpLabels {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(small_labels(
            self.reporter,
            RequestProtocol::Tcp,
            self.connection_security_policy,
        ));
        self.response_flags.hash(h);
        hash_identity(
            &self.source,
            &self.destination,
            &self.destination_service,
            h,
        );
    }
}

/// Encodes one label with Prometheus escaping (prometheus-client writes values verbatim, and a quote or
/// backslash in, say, a workload name would otherwise corrupt the whole exposition).
pub(super) fn label(enc: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> fmt::Result {
    let mut l = enc.encode_label();
    let mut k = l.encode_label_key()?;
    k.write_str(key)?;
    let mut v = k.encode_label_value()?;
    let mut last = 0;
    for (i, c) in value.char_indices() {
        let esc = match c {
            '\\' => "\\\\",
            '"' => "\\\"",
            '\n' => "\\n",
            _ => continue,
        };
        v.write_str(&value[last..i])?;
        v.write_str(esc)?;
        last = i + 1;
    }
    v.write_str(&value[last..])?;
    v.finish()
}

/// The 23 labels HTTP and TCP share, borrowed from either label struct.
struct CommonLabels<'a> {
    reporter: Reporter,
    src: &'a PeerLabels,
    dst: &'a PeerLabels,
    svc: &'a ServiceLabels,
    protocol: RequestProtocol,
    flags: &'a str,
    policy: SecurityPolicy,
    tags: Option<&'a TagValues>,
}

impl CommonLabels<'_> {
    /// Writes the labels in Istio's order.
    fn encode(&self, enc: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let (src, dst, svc, tags) = (self.src, self.dst, self.svc, self.tags);
        edited_label(enc, tags, "reporter", self.reporter.as_str())?;
        edited_label(enc, tags, "source_workload", &src.workload)?;
        edited_label(
            enc,
            tags,
            "source_workload_namespace",
            &src.workload_namespace,
        )?;
        edited_label(enc, tags, "source_principal", &src.principal)?;
        edited_label(enc, tags, "source_app", &src.app)?;
        edited_label(enc, tags, "source_version", &src.version)?;
        edited_label(
            enc,
            tags,
            "source_canonical_service",
            &src.canonical_service,
        )?;
        edited_label(
            enc,
            tags,
            "source_canonical_revision",
            &src.canonical_revision,
        )?;
        edited_label(enc, tags, "source_cluster", &src.cluster)?;
        edited_label(enc, tags, "destination_workload", &dst.workload)?;
        edited_label(
            enc,
            tags,
            "destination_workload_namespace",
            &dst.workload_namespace,
        )?;
        edited_label(enc, tags, "destination_principal", &dst.principal)?;
        edited_label(enc, tags, "destination_app", &dst.app)?;
        edited_label(enc, tags, "destination_version", &dst.version)?;
        edited_label(enc, tags, "destination_service", &svc.service)?;
        edited_label(enc, tags, "destination_service_name", &svc.service_name)?;
        edited_label(
            enc,
            tags,
            "destination_service_namespace",
            &svc.service_namespace,
        )?;
        edited_label(
            enc,
            tags,
            "destination_canonical_service",
            &dst.canonical_service,
        )?;
        edited_label(
            enc,
            tags,
            "destination_canonical_revision",
            &dst.canonical_revision,
        )?;
        edited_label(enc, tags, "destination_cluster", &dst.cluster)?;
        edited_label(enc, tags, "request_protocol", self.protocol.as_str())?;
        let flags = if self.flags.is_empty() {
            "-"
        } else {
            self.flags
        };
        edited_label(enc, tags, "response_flags", flags)?;
        edited_label(
            enc,
            tags,
            "connection_security_policy",
            self.policy.as_str(),
        )
    }
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        CommonLabels {
            reporter: self.reporter,
            src: &self.source,
            dst: &self.destination,
            svc: &self.destination_service,
            protocol: self.request_protocol,
            flags: &self.response_flags,
            policy: self.connection_security_policy,
            tags: self.tags.as_deref(),
        }
        .encode(encoder)?;
        let tags = self.tags.as_deref();
        let mut code = itoa_u32(u32::from(self.response_code));
        edited_label(encoder, tags, "response_code", code.as_str())?;
        match self.grpc_response_status {
            Some(s) => {
                code = itoa_u32(s);
                edited_label(encoder, tags, "grpc_response_status", code.as_str())?;
            }
            None => edited_label(encoder, tags, "grpc_response_status", "")?,
        }
        added_labels(encoder, tags, &HTTP_LABEL_NAMES)
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        CommonLabels {
            reporter: self.reporter,
            src: &self.source,
            dst: &self.destination,
            svc: &self.destination_service,
            protocol: RequestProtocol::Tcp,
            flags: &self.response_flags,
            policy: self.connection_security_policy,
            tags: None,
        }
        .encode(encoder)
    }
}

/// A small stack string for numeric label values.
pub(super) struct NumBuf {
    buf: [u8; 10],
    len: usize,
}

impl NumBuf {
    pub(super) fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0")
    }
}

pub(super) fn itoa_u32(mut n: u32) -> NumBuf {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    let mut buf = [0u8; 10];
    buf[..len].copy_from_slice(&tmp[i..]);
    NumBuf { buf, len }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct BuildLabels {
    pub(super) tag: Arc<str>,
}

impl EncodeLabelSet for BuildLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "component", "proxy")?;
        label(encoder, "tag", &self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa() {
        for n in [0, 7, 200, 65535, u32::MAX] {
            assert_eq!(itoa_u32(n).as_str(), n.to_string());
        }
    }
}
