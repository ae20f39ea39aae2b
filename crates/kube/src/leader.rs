//! Leader election over a `coordination.k8s.io/v1` Lease, as istiod elects one replica for the
//! work that must be done once per cluster (`pilot/pkg/leaderelection`): here, writing analysis
//! to the objects' status. Every replica serves xDS and the webhooks; only the leader writes.
//!
//! The lease follows client-go's protocol, so `kubectl get lease -n istio-system` reads as it
//! does for istiod: the holder renews `renewTime` every `retry_period`; another replica takes
//! the lease over only when it has not been renewed for `lease_duration`, and every write
//! carries the `resourceVersion` it read, so two replicas cannot both win (the API server
//! refuses the second with 409 Conflict). A leader that cannot renew within `renew_deadline`
//! stops leading before its lease can expire for the others.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// The Lease (in the Istio namespace) whose holder writes analysis to status.
pub const STATUS_LEASE: &str = "sluice-control-status";

/// The lease and its timings (istiod's: 30 s, 15 s, 5 s).
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseOptions {
    /// istiod's timings for the lease `name` in `namespace`, held as `identity`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseOptions {
        LeaseOptions {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(30),
            renew_deadline: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
        }
    }
}

/// This replica's identity in leases: `POD_NAME`, else `HOSTNAME` (a pod's name), else the host
/// name with the process id.
pub fn default_identity() -> String {
    for var in ["POD_NAME", "HOSTNAME"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    format!("sluice-control-{}", std::process::id())
}

/// Campaigns for the lease until `leading`'s receivers are all gone; `leading` says whether
/// this replica leads now.
pub async fn run(client: kube::Client, opts: LeaseOptions, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &opts.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let attempt = tokio::time::timeout(opts.retry_period, try_acquire_or_renew(&api, &opts));
        let now_leading = match attempt.await {
            Ok(Ok(held)) => {
                if held {
                    last_renewed = Some(tokio::time::Instant::now());
                }
                held
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %opts.name, "leader election: {e}");
                // Keep leading only while the lease cannot have expired for the others.
                last_renewed.is_some_and(|t| t.elapsed() < opts.renew_deadline)
            }
            Err(_) => last_renewed.is_some_and(|t| t.elapsed() < opts.renew_deadline),
        };
        if !now_leading {
            last_renewed = None;
        }
        let was_leading = *leading.borrow();
        if now_leading != was_leading {
            if now_leading {
                tracing::info!(lease = %opts.name, identity = %opts.identity, "leading: this replica writes status");
            } else {
                tracing::info!(lease = %opts.name, identity = %opts.identity, "no longer leading");
            }
            if leading.send(now_leading).is_err() {
                return;
            }
        }
        if leading.is_closed() {
            return;
        }
        tokio::time::sleep(opts.retry_period).await;
    }
}

/// One round of client-go's `tryAcquireOrRenew`: whether this replica holds the lease after it.
async fn try_acquire_or_renew(api: &Api<Lease>, opts: &LeaseOptions) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(opts.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&opts.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                namespace: Some(opts.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(opts.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == opts.identity;
    if !ours && !holder.is_empty() {
        let held_for = spec
            .lease_duration_seconds
            .map_or(opts.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let expired = renewed.is_none_or(|renewed| {
            now.duration_since(renewed)
                >= SignedDuration::try_from(held_for).unwrap_or(SignedDuration::MAX)
        });
        if !expired {
            return Ok(false);
        }
    }
    if !ours {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.holder_identity = Some(opts.identity.clone());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_secs);
    // The replace carries the resourceVersion read above: a replica that wrote in between
    // makes this one fail with 409 instead of both believing they lead.
    match api
        .replace(&opts.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
