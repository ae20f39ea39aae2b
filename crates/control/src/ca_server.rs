//! The certificate service on the mutual-TLS port (istiod's CA on 15012): a proxy sends a
//! certificate request with its Kubernetes service-account token, and gets back a workload
//! certificate from the mesh root for the identity the token proves,
//! `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, whatever the request asks for.
//!
//! As istiod (`security/pkg/server/ca`): the token is checked by the API server
//! ([`TokenReviewer`]: a TokenReview with audience `istio-ca`); a caller that already holds a
//! mesh certificate may instead renew the identity that certificate carries (mutual TLS); a
//! requested lifetime is granted up to `MAX_WORKLOAD_CERT_TTL` (90 days), 24 hours when none is
//! asked; the chain returned is the workload certificate then the root.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::identity::{spiffe_id_for, MeshCa};
use sluice_xds::ca::{Caller, CertificateAuthority, IstioCertificateRequest};
use sluice_xds::tonic::Status;

/// istiod's `DEFAULT_WORKLOAD_CERT_TTL` and `MAX_WORKLOAD_CERT_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Who a service-account token belongs to: `(namespace, service account)`, or why it proves
/// nothing.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review(&self, token: String) -> BoxFuture<Result<(String, String), String>>;
}

/// Signs workload certificates from the mesh root for authenticated callers.
#[derive(Clone)]
pub struct WorkloadCa {
    ca: Arc<MeshCa>,
    trust_domain: Arc<str>,
    reviewer: Arc<dyn TokenReviewer>,
}

impl WorkloadCa {
    pub fn new(ca: MeshCa, trust_domain: &str, reviewer: Arc<dyn TokenReviewer>) -> WorkloadCa {
        WorkloadCa {
            ca: Arc::new(ca),
            trust_domain: Arc::from(trust_domain),
            reviewer,
        }
    }

    /// The identity `caller` proves, trying each proof in turn as istiod's authenticators do:
    /// its token's service account, else its client certificate's SPIFFE ID (verified against
    /// the mesh root by the handshake; a renewal once the token has expired).
    async fn identity(&self, caller: Caller) -> Result<String, Status> {
        let token = match caller.bearer_token {
            None => None,
            Some(token) => match self.reviewer.review(token).await {
                Ok((namespace, service_account)) => {
                    return Ok(spiffe_id_for(
                        &self.trust_domain,
                        &namespace,
                        &service_account,
                    ))
                }
                Err(why) => Some(why),
            },
        };
        match (caller.peer_identity, token) {
            (Some(id), _) => Ok(id),
            (None, Some(why)) => Err(Status::unauthenticated(format!(
                "the bearer token is not accepted: {why}"
            ))),
            (None, None) => Err(Status::unauthenticated(
                "no bearer token (a Kubernetes service-account token with audience istio-ca) \
                 and no client certificate",
            )),
        }
    }
}

impl CertificateAuthority for WorkloadCa {
    fn create(
        &self,
        caller: Caller,
        request: IstioCertificateRequest,
    ) -> BoxFuture<Result<Vec<String>, Status>> {
        let this = self.clone();
        Box::pin(async move {
            let spiffe_id = this.identity(caller).await?;
            let ttl = match u64::try_from(request.validity_duration) {
                Ok(secs) if secs > 0 => Duration::from_secs(secs).min(MAX_TTL),
                _ => DEFAULT_TTL,
            };
            let ca = this.ca.clone();
            let id = spiffe_id.clone();
            let signed =
                tokio::task::spawn_blocking(move || ca.sign_request(&request.csr, &id, ttl))
                    .await
                    .map_err(|_| Status::internal("signing failed"))?
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            tracing::info!(identity = %spiffe_id, ttl = ?ttl, "certificate signed");
            Ok(vec![signed, this.ca.root_pem().to_string()])
        })
    }
}

/// Tokens reviewed by the Kubernetes API server (a TokenReview for the audience `istio-ca`).
pub struct KubeTokenReviewer(pub sluice_kube::kube::Client);

impl TokenReviewer for KubeTokenReviewer {
    fn review(&self, token: String) -> BoxFuture<Result<(String, String), String>> {
        let client = self.0.clone();
        Box::pin(async move { sluice_kube::token_review::review(&client, &token).await })
    }
}
