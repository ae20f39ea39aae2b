//! `sluice_egress_blocked_total`: outbound calls the proxy refused, by source, destination host,
//! port and protocol, with a cap on how many destinations get a series of their own.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

use super::labels::{itoa_u32, label};
use super::Metrics;

/// The `protocol` label of `sluice_egress_blocked_total`: how the refused call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockedProtocol {
    /// Plain HTTP (REGISTRY_ONLY `block_all` 502, gateway 404 for a host with no route).
    Http,
    /// TLS, named by its SNI (BlackHoleCluster, gateway without a filter chain for the SNI).
    Tls,
    /// Any other TCP (BlackHoleCluster), named by destination IP.
    Tcp,
}

impl BlockedProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedProtocol::Http => "http",
            BlockedProtocol::Tls => "tls",
            BlockedProtocol::Tcp => "tcp",
        }
    }
}

/// Distinct label sets `sluice_egress_blocked_total` keeps before folding new destinations into
/// `destination_host="other"`: one series per refused host must not let a client that calls
/// random names grow the exposition without bound.
pub const BLOCKED_SERIES_LIMIT: usize = 1000;

/// The folded `destination_host` once [`BLOCKED_SERIES_LIMIT`] is reached.
pub const BLOCKED_OTHER_HOST: &str = "other";

/// Labels of `sluice_egress_blocked_total`, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockedLabels {
    /// This proxy's workload (`source_workload` of Istio's metrics).
    pub source_workload: Arc<str>,
    /// The refused host: HTTP Host without port, TLS SNI, or the destination IP.
    pub destination_host: Arc<str>,
    /// The destination port the client called.
    pub port: u16,
    pub protocol: BlockedProtocol,
}

impl EncodeLabelSet for BlockedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "source_workload", &self.source_workload)?;
        label(encoder, "destination_host", &self.destination_host)?;
        let port = itoa_u32(u32::from(self.port));
        label(encoder, "port", port.as_str())?;
        label(encoder, "protocol", self.protocol.as_str())
    }
}

impl Metrics {
    /// Counts one refused outbound call in `sluice_egress_blocked_total`. Once
    /// [`BLOCKED_SERIES_LIMIT`] label sets exist, a new destination is counted under
    /// `destination_host="other"` (same source, port and protocol).
    pub fn record_blocked(
        &self,
        source_workload: &Arc<str>,
        destination_host: &str,
        port: u16,
        protocol: BlockedProtocol,
    ) {
        let mut labels = BlockedLabels {
            source_workload: source_workload.clone(),
            destination_host: Arc::from(if destination_host.is_empty() {
                "-"
            } else {
                destination_host
            }),
            port,
            protocol,
        };
        if self.egress_blocked.get(&labels).is_none() {
            let mut series = self
                .egress_blocked_series
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.egress_blocked.get(&labels).is_none() {
                if *series >= BLOCKED_SERIES_LIMIT {
                    labels.destination_host = Arc::from(BLOCKED_OTHER_HOST);
                    if self.egress_blocked.get(&labels).is_none() {
                        *series += 1;
                    }
                } else {
                    *series += 1;
                }
            }
        }
        self.egress_blocked.get_or_create(&labels).inc();
    }
}
