//! Istio's certificate service on the wire (`istio.v1.auth.IstioCertificateService`, what
//! istio-agent calls on istiod's 15012): the gRPC service `sluice control` serves, with the
//! signing left to a [`CertificateAuthority`], and the client call a proxy makes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::server::NamedService;
use tonic::Status;

pub use crate::pb::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// Largest request read: a CSR is a few hundred bytes; metadata is small.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the request's connection and metadata prove about the caller.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The bearer token of the `authorization` metadata, if any.
    pub bearer_token: Option<String>,
    /// The SPIFFE ID of the mutual-TLS client certificate, if the connection has one.
    pub peer_identity: Option<String>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Signs certificate requests for authenticated callers.
pub trait CertificateAuthority: Send + Sync + 'static {
    /// The certificate chain (PEM, workload first, root last) for `request` from `caller`, or
    /// the status to answer (unauthenticated, invalid argument, ...).
    fn create(
        &self,
        caller: Caller,
        request: IstioCertificateRequest,
    ) -> BoxFuture<Result<Vec<String>, Status>>;
}

/// The certificate service for tonic's router: `Server::builder().add_service(ca)`.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<dyn CertificateAuthority>,
}

impl CaService {
    pub fn new(ca: Arc<dyn CertificateAuthority>) -> CaService {
        CaService { ca }
    }
}

impl NamedService for CaService {
    const NAME: &'static str = SERVICE;
}

/// The unary call, as tonic's server drives it.
struct Create {
    ca: Arc<dyn CertificateAuthority>,
    peer_identity: Option<String>,
}

impl tonic::server::UnaryService<IstioCertificateRequest> for Create {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Result<tonic::Response<IstioCertificateResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let bearer_token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let caller = Caller {
            bearer_token,
            peer_identity: self.peer_identity.clone(),
        };
        let ca = self.ca.clone();
        Box::pin(async move {
            let cert_chain = ca.create(caller, request.into_inner()).await?;
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain,
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for CaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != CREATE_CERTIFICATE {
            let status = Status::unimplemented(format!("unknown method {}", request.uri().path()));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let peer_identity = request
            .extensions()
            .get::<crate::server::MtlsConnectInfo>()
            .and_then(|m| m.identity.clone());
        let create = Create {
            ca: self.ca.clone(),
            peer_identity,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(create, request).await)
        })
    }
}

/// Why a certificate request got no certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaError {
    /// The service could not be reached or did not answer in time: worth asking again.
    Unreachable(String),
    /// The service answered with a refusal (a bad token, a bad request): asking again the same
    /// way gets the same answer.
    Refused(String),
}

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaError::Unreachable(m) | CaError::Refused(m) => f.write_str(m),
        }
    }
}

/// Asks the CA at `server` (`HOST:PORT`, over TLS with `tls`) to sign `request`, authenticated
/// by `bearer_token`; the chain it returns (PEM, workload first).
pub async fn create_certificate(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
    bearer_token: Option<&str>,
    request: IstioCertificateRequest,
    timeout: Duration,
) -> Result<Vec<String>, CaError> {
    let call = async {
        let channel = crate::client::connect_tls(server, tls)
            .await
            .map_err(CaError::Unreachable)?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| CaError::Unreachable(format!("{server}: {e}")))?;
        let mut request = tonic::Request::new(request);
        if let Some(token) = bearer_token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                CaError::Refused("the token is not a valid header value".to_string())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
        let response: tonic::Response<IstioCertificateResponse> = grpc
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await
            .map_err(|s| {
                let message = format!("{server}: {:?}: {}", s.code(), s.message());
                match s.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Internal => CaError::Unreachable(message),
                    _ => CaError::Refused(message),
                }
            })?;
        Ok(response.into_inner().cert_chain)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CaError::Unreachable(format!("{server}: no answer within {timeout:?}")))?
}
