//! How connections to a cluster are secured: plaintext, DestinationRule TLS (SIMPLE, MUTUAL) with
//! its SNI, or ISTIO_MUTUAL with this proxy's mesh identity, Istio's SNI and the peer identities
//! expected. Chosen per cluster (and request, for SNI) by [`security_for`]; the cluster runtime
//! caches the ISTIO_MUTUAL choice per cluster version.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sluice_model::{Cluster, UpstreamTls};

use crate::identity::Identity;

/// How a connection to an upstream is secured, chosen per cluster (and request, for SNI).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamSecurity {
    Plain,
    /// DestinationRule SIMPLE / MUTUAL with this SNI.
    Tls {
        settings: Arc<UpstreamTls>,
        sni: String,
    },
    /// ISTIO_MUTUAL with the proxy's mesh certificate: the DestinationRule's `sni`, else Istio's
    /// (`outbound_.<port>_.<subset>_.<host>`); the peer's expected SPIFFE IDs.
    IstioMutual {
        identity: MeshIdentity,
        sni: Arc<str>,
        expected_sans: Arc<[String]>,
    },
}

/// The proxy's identity as part of a pool key: compared by pointer (one identity per process;
/// its certificate rotates inside it).
#[derive(Clone)]
pub struct MeshIdentity(pub Arc<Identity>);

impl PartialEq for MeshIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MeshIdentity {}

impl std::hash::Hash for MeshIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.spiffe_id())
    }
}

impl UpstreamSecurity {
    /// The expected peer principal for metrics (`destination_principal`): the one expected SAN
    /// of an ISTIO_MUTUAL connection.
    pub fn expected_principal(&self) -> Option<&str> {
        match self {
            UpstreamSecurity::IstioMutual { expected_sans, .. } if expected_sans.len() == 1 => {
                Some(expected_sans[0].as_str())
            }
            _ => None,
        }
    }
}

/// ISTIO_MUTUAL clusters already reported as sent in plaintext (no mesh identity).
static PLAINTEXT_FALLBACK_LOGGED: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);

/// The security of connections to `cluster`. `authority` is the request's host (Envoy's auto
/// SNI for SIMPLE without `sni`); TCP/TLS streams pass the service host.
///
/// ISTIO_MUTUAL without a mesh identity (no `--mesh-ca`) falls back to plaintext, logged once per
/// cluster: Istio would fail these connections instead, but a proxy started without an identity
/// was deliberately run outside the mesh's PKI, and a STRICT server refuses the plaintext anyway.
pub fn security_for(
    identity: Option<&Arc<Identity>>,
    cluster: &Cluster,
    authority: &str,
) -> UpstreamSecurity {
    let Some(tls) = &cluster.tls else {
        return UpstreamSecurity::Plain;
    };
    if tls.istio_mutual {
        if let Some(identity) = identity {
            return UpstreamSecurity::IstioMutual {
                identity: MeshIdentity(identity.clone()),
                // A DestinationRule `sni` wins (routing through an egress gateway needs it).
                sni: Arc::from(cluster.upstream_sni(authority).unwrap_or_default()),
                expected_sans: tls.subject_alt_names.clone().into(),
            };
        }
        let mut logged = PLAINTEXT_FALLBACK_LOGGED
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged
            .get_or_insert_with(HashSet::new)
            .insert(cluster.name.clone())
        {
            tracing::warn!(
                "{}: ISTIO_MUTUAL requested (DestinationRule or auto mTLS) but this proxy has no \
                 mesh identity (start it with --mesh-ca); sending plaintext. Istio would fail \
                 these connections, and a STRICT server will refuse them",
                cluster.name
            );
        }
        return UpstreamSecurity::Plain;
    }
    let sni = cluster
        .upstream_sni(authority)
        .unwrap_or_default()
        .into_owned();
    UpstreamSecurity::Tls {
        settings: tls.clone(),
        sni,
    }
}
