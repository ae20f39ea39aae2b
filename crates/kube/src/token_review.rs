//! Service-account tokens checked by the API server (`authentication.k8s.io/v1` TokenReview),
//! as istiod's Kubernetes JWT authenticator does for its certificate service: the token must
//! be valid for the audience `istio-ca`, and belong to a service account
//! (`system:serviceaccount:NAMESPACE:NAME`).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience Istio's certificate service accepts (istiod's `TOKEN_AUDIENCES` default).
pub const AUDIENCE: &str = "istio-ca";

/// `(namespace, service account)` of `token`, or why the API server does not vouch for it.
pub async fn review(client: &kube::Client, token: &str) -> Result<(String, String), String> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let reviewed = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| format!("the token review failed: {e}"))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server does not authenticate it".to_string()));
    }
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(format!("it is not meant for {AUDIENCE}"));
        }
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| format!("{username:?} is not a service account"))?;
    Ok((namespace.to_string(), service_account.to_string()))
}
