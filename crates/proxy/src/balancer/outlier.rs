//! Outlier detection: consecutive errors per endpoint (5xx, gateway errors, local-origin
//! failures), ejections for `baseEjectionTime × times ejected` within `maxEjectionPercent`, and
//! Istio's `minHealthPercent` as Envoy's panic threshold.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_model::policy::OutlierPolicy;

use super::{ClusterRuntime, ClusterState, EndpointState};

/// The result of one call to an endpoint, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The upstream answered with this status.
    Status(u16),
    /// A TCP-proxied connection was established (the final success for a stream).
    Connected,
    /// The connection could not be made (refused, unreachable, TLS handshake failure).
    ConnectFailed,
    /// No response in time.
    Timeout,
    /// The connection was reset before the response started.
    Reset,
}

impl ClusterRuntime {
    /// Whether outlier detection has `ep` out right now.
    pub fn is_ejected(&self, ep: &EndpointState) -> bool {
        ep.ejected_at(self.now())
    }

    /// Istio maps `minHealthPercent` to Envoy's panic threshold: below it, ejections are ignored.
    pub(super) fn panic_mode(&self, state: &ClusterState, now: u64) -> bool {
        let Some(o) = &state.cluster.outlier else {
            return false;
        };
        if o.min_health_percent == 0 {
            return false;
        }
        let total = state.endpoints.len() as u64;
        let healthy = state
            .endpoints
            .iter()
            .filter(|e| !e.ejected_at(now))
            .count() as u64;
        healthy * 100 < u64::from(o.min_health_percent) * total
    }

    pub(super) fn report(&self, ep: &EndpointState, result: CallResult) {
        let state = self.state.load();
        let error = match result {
            CallResult::Status(s) => s >= 500,
            CallResult::Connected => false,
            _ => true,
        };
        if error {
            ep.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let Some(policy) = &state.cluster.outlier else {
            return;
        };
        let split = policy.consecutive_local_origin.is_some();
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed) + 1;
        let reset = |c: &AtomicU32| c.store(0, Ordering::Relaxed);
        let mut tripped = false;
        let over = |count: u32, limit: Option<u32>| limit.is_some_and(|l| l > 0 && count >= l);
        match result {
            CallResult::Status(s) => {
                if s >= 500 {
                    tripped |= over(bump(&ep.consecutive_5xx), policy.consecutive_5xx);
                    if (502..=504).contains(&s) {
                        tripped |= over(bump(&ep.consecutive_gateway), policy.consecutive_gateway);
                    } else {
                        reset(&ep.consecutive_gateway);
                    }
                } else {
                    reset(&ep.consecutive_5xx);
                    reset(&ep.consecutive_gateway);
                }
                if split {
                    reset(&ep.consecutive_local);
                }
            }
            CallResult::Connected => {
                // The final success of a TCP-proxied connection.
                reset(&ep.consecutive_local);
                if !split {
                    reset(&ep.consecutive_5xx);
                    reset(&ep.consecutive_gateway);
                }
            }
            CallResult::ConnectFailed | CallResult::Timeout | CallResult::Reset => {
                if split {
                    tripped |= over(bump(&ep.consecutive_local), policy.consecutive_local_origin);
                } else {
                    // Without the split, Envoy counts local-origin failures as 503/504s.
                    tripped |= over(bump(&ep.consecutive_5xx), policy.consecutive_5xx);
                    tripped |= over(bump(&ep.consecutive_gateway), policy.consecutive_gateway);
                }
            }
        }
        if tripped {
            self.eject(&state, ep, policy);
        }
    }

    /// Ejects `ep` for `baseEjectionTime × times ejected`, unless `maxEjectionPercent` of the
    /// cluster is already out. Like Envoy, the share is checked before ejecting, so one ejection
    /// is always allowed.
    fn eject(&self, state: &ClusterState, ep: &EndpointState, policy: &OutlierPolicy) {
        let _lock = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        if ep.ejected_at(now) {
            return;
        }
        let total = state.endpoints.len() as u64;
        let ejected = state.endpoints.iter().filter(|e| e.ejected_at(now)).count() as u64;
        if ejected > 0 && ejected * 100 >= u64::from(policy.max_ejection_percent) * total {
            ep.reset_counters();
            return;
        }
        let times = ep.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let out = policy.base_ejection_time.saturating_mul(times);
        let until = now.saturating_add(out.as_nanos().min(u128::from(u64::MAX)) as u64);
        ep.ejected_until.store(until.max(1), Ordering::Relaxed);
        ep.reset_counters();
        self.stats.ejections_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "outlier detection ejected {} from {} for {:?}",
            ep.host(),
            self.name,
            out
        );
    }

    /// How long `ep` stays ejected from now (zero when it is not ejected).
    pub fn ejected_for(&self, ep: &EndpointState) -> Duration {
        let until = ep.ejected_until.load(Ordering::Relaxed);
        Duration::from_nanos(until.saturating_sub(self.now()))
    }
}
