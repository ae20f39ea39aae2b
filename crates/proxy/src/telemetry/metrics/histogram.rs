//! Istio's request histograms without a lock per observation.
//!
//! prometheus-client's `Histogram` takes a write lock for every observation, and a request makes
//! three (duration, request size, response size). These buckets are atomics: an observation is
//! two relaxed `fetch_add`s. Values are whole numbers (milliseconds, bytes), as Envoy records
//! them, so the sum is an integer too.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::ENVOY_DEFAULT_BUCKETS;

const BUCKETS: usize = ENVOY_DEFAULT_BUCKETS.len() + 1;

/// A histogram with Envoy's default buckets (plus `+Inf`). Clones share the same series.
#[derive(Clone, Default)]
pub struct EnvoyHistogram(Arc<Counts>);

#[derive(Default)]
struct Counts {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl EnvoyHistogram {
    /// Records one observation of `value`.
    pub fn observe(&self, value: u64) {
        // The first bucket whose upper bound is ≥ value; `+Inf` past the last.
        let v = value as f64;
        let i = ENVOY_DEFAULT_BUCKETS.partition_point(|bound| *bound < v);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Sum, count and per-bucket counts (upper bound, observations). The count is the buckets'
    /// total, so a scrape that races an observation still shows `_count` equal to the `+Inf`
    /// bucket.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let sum = self.0.sum.load(Ordering::Relaxed);
        let buckets: Vec<(f64, u64)> = ENVOY_DEFAULT_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&self.0.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum as f64, count, buckets)
    }
}

impl fmt::Debug for EnvoyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sum, count, _) = self.get();
        f.debug_struct("EnvoyHistogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish()
    }
}

impl TypedMetric for EnvoyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for EnvoyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;

    /// The same observations give the same exposition as prometheus-client's own histogram.
    #[test]
    fn encodes_like_the_locking_histogram() {
        let ours = EnvoyHistogram::default();
        let theirs = Histogram::new(ENVOY_DEFAULT_BUCKETS);
        for v in [
            0,
            1,
            2,
            5,
            6,
            499,
            500,
            501,
            3_600_000,
            3_600_001,
            u64::from(u32::MAX),
        ] {
            ours.observe(v);
            theirs.observe(v as f64);
        }
        let text = |register: &dyn Fn(&mut prometheus_client::registry::Registry)| {
            let mut r = prometheus_client::registry::Registry::default();
            register(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        let a = text(&|r| r.register("h", "h", ours.clone()));
        let b = text(&|r| r.register("h", "h", theirs.clone()));
        assert_eq!(a, b);
        assert!(a.contains("h_bucket{le=\"0.5\"} 1\n"), "{a}");
        assert!(a.contains("h_count 11\n"), "{a}");
    }

    #[test]
    fn observations_from_many_threads_are_all_counted() {
        let h = EnvoyHistogram::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let h = h.clone();
                s.spawn(move || (0..10_000).for_each(|i| h.observe(i % 100)));
            }
        });
        let (sum, count, buckets) = h.get();
        assert_eq!(count, 40_000);
        assert_eq!(sum, 4.0 * 100.0 * 4950.0);
        assert_eq!(buckets.last().unwrap().1, 0, "nothing above 3600000");
    }
}
