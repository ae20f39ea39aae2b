//! Responses encoded once per collection and scope, shared by every stream that needs them.
//!
//! Every proxy with the same [`ScopeKey`] receives the same resources of a collection, so the
//! state-of-the-world response (everything but its nonce) is encoded once per publish, scope
//! and type URL. Delta responses are shared the same way, keyed also by what the proxy holds:
//! the common cases (nothing yet, or exactly the previous publish) are the same for every
//! proxy of a scope; only a proxy that reconnected with versions of its own gets one computed
//! for it alone.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;

use crate::discovery::{DeltaDiscoveryResponse, DiscoveryResponse, Resource};
use crate::server::{PeerScope, PublishedCollection};

/// Name → version, as a proxy holds a collection under delta xDS.
pub(crate) type Versions = BTreeMap<String, String>;

/// What decides which resources of a collection a proxy receives. Proxies with equal keys
/// receive the same resources; a collection scoped by nothing has one key for everyone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ScopeKey {
    namespace: Option<String>,
    authenticated: bool,
    /// The Sidecar that applies, and a digest of what it imports from the collection.
    sidecar: Option<(Arc<str>, u64)>,
}

/// What a delta stream's proxy holds, when it is something every proxy of a scope may hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HeldId {
    Nothing,
    /// Collection `version` as scoped by `scope`.
    Published {
        version: String,
        scope: ScopeKey,
    },
}

/// One encoded response.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The response without its nonce.
    pub(crate) body: Bytes,
    /// State of the world: a digest of the resources in it, to skip a push that changes
    /// nothing for the proxy.
    pub(crate) signature: u64,
    /// Delta: whether the response changes anything (else it is not sent, except as a first
    /// answer), and what the proxy holds once it applies it.
    pub(crate) changes: bool,
    pub(crate) holds: Arc<Versions>,
    /// The bytes of the resources in it (for `pilot_xds_config_size_bytes`).
    pub(crate) bytes: usize,
    /// Resources and bytes scoping withheld.
    pub(crate) withheld: (usize, usize),
}

/// A collection's encoded responses. Shared by the clones of a published collection (they
/// have the same content) and dropped with it.
#[derive(Default)]
pub struct ResponseCache {
    sotw: Mutex<HashMap<(String, ScopeKey), Arc<Encoded>>>,
    delta: Mutex<HashMap<(String, ScopeKey, HeldId), Arc<Encoded>>>,
    holds: Mutex<HashMap<ScopeKey, Arc<Versions>>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("sotw", &lock(&self.sotw).len())
            .field("delta", &lock(&self.delta).len())
            .finish()
    }
}

impl ScopeKey {
    /// The key of a collection scoped by nothing.
    fn everyone() -> ScopeKey {
        ScopeKey {
            namespace: None,
            authenticated: false,
            sidecar: None,
        }
    }
}

impl PublishedCollection {
    /// The key of the resources a proxy of `scope` receives from this collection (whose main
    /// type URL is `main`).
    pub(crate) fn scope_key(&self, main: &str, scope: &PeerScope) -> ScopeKey {
        let by_audience = !self.audiences.is_empty();
        ScopeKey {
            namespace: by_audience.then(|| scope.namespace.clone()),
            authenticated: by_audience && scope.authenticated.is_some(),
            sidecar: scope.sidecar.as_ref().and_then(|sidecar| {
                let set = sidecar.collections.get(main)?;
                Some((sidecar.key.clone(), set.digest))
            }),
        }
    }

    /// The state-of-the-world response for a proxy of `scope` (who `identifier` answers, the
    /// type URL it asked with).
    pub(crate) fn sotw_response(
        &self,
        main: &str,
        type_url: &str,
        scope: &PeerScope,
        identifier: &str,
    ) -> Arc<Encoded> {
        let key = (type_url.to_string(), self.scope_key(main, scope));
        let mut cache = lock(&self.responses.sotw);
        if let Some(found) = cache.get(&key) {
            return found.clone();
        }
        let (admitted, withheld) = self.admitted(main, scope);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        if key.1 == ScopeKey::everyone() {
            // Everyone gets everything: the version moves exactly when the content does.
            self.version.hash(&mut hasher);
        } else {
            for &i in &admitted {
                self.digest(i).hash(&mut hasher);
            }
            admitted.len().hash(&mut hasher);
        }
        let resources: Vec<_> = admitted
            .iter()
            .map(|&i| self.resources[i].clone())
            .collect();
        let bytes = resources.iter().map(|a| a.value.len()).sum();
        let response = DiscoveryResponse {
            version_info: self.version.clone(),
            resources,
            type_url: type_url.to_string(),
            control_plane: Some(control_plane(identifier)),
            ..DiscoveryResponse::default()
        };
        let encoded = Arc::new(Encoded {
            body: Bytes::from(response.encode_to_vec()),
            signature: hasher.finish(),
            changes: true,
            holds: Arc::default(),
            bytes,
            withheld,
        });
        cache.insert(key, encoded.clone());
        encoded
    }

    /// What a delta proxy of `scope` holds once it has this collection: each admitted
    /// resource's name and version (a digest of its bytes).
    pub(crate) fn holds(&self, main: &str, scope: &PeerScope) -> Arc<Versions> {
        let key = self.scope_key(main, scope);
        let mut cache = lock(&self.responses.holds);
        cache
            .entry(key)
            .or_insert_with(|| {
                let (admitted, _) = self.admitted(main, scope);
                Arc::new(
                    admitted
                        .into_iter()
                        .map(|i| (self.name(i), format!("{:016x}", self.digest(i))))
                        .collect(),
                )
            })
            .clone()
    }

    /// The delta response that brings a proxy of `scope` from `held` to this collection.
    /// `held_id` names what it holds when other proxies may hold the same (the response is then
    /// shared); `None` when the proxy said what it holds itself.
    pub(crate) fn delta_response(
        &self,
        main: &str,
        type_url: &str,
        scope: &PeerScope,
        identifier: &str,
        held: &Versions,
        held_id: Option<HeldId>,
    ) -> Arc<Encoded> {
        let compute = || {
            let holds = self.holds(main, scope);
            let (admitted, withheld) = self.admitted(main, scope);
            let by_name: HashMap<String, usize> =
                admitted.iter().map(|&i| (self.name(i), i)).collect();
            let changed: Vec<Resource> = holds
                .iter()
                .filter(|(name, version)| held.get(*name) != Some(version))
                .map(|(name, version)| Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(self.resources[by_name[name]].clone()),
                    ..Resource::default()
                })
                .collect();
            let removed: Vec<String> = held
                .keys()
                .filter(|name| !holds.contains_key(*name))
                .cloned()
                .collect();
            let bytes = changed
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .map(|a| a.value.len())
                .sum();
            let changes = !(changed.is_empty() && removed.is_empty());
            let response = DeltaDiscoveryResponse {
                system_version_info: self.version.clone(),
                resources: changed,
                removed_resources: removed,
                type_url: type_url.to_string(),
                control_plane: Some(control_plane(identifier)),
                ..DeltaDiscoveryResponse::default()
            };
            Arc::new(Encoded {
                body: Bytes::from(response.encode_to_vec()),
                signature: 0,
                changes,
                holds,
                bytes,
                withheld,
            })
        };
        let Some(held_id) = held_id else {
            return compute();
        };
        let key = (type_url.to_string(), self.scope_key(main, scope), held_id);
        let mut cache = lock(&self.responses.delta);
        if let Some(found) = cache.get(&key) {
            return found.clone();
        }
        let encoded = compute();
        cache.insert(key, encoded.clone());
        encoded
    }
}

/// A stream's nonce as the one field of a response, to follow a shared body.
pub(crate) fn nonce_field(nonce: &str) -> Bytes {
    // Field 5 in both messages; encoded by each message's own code all the same.
    Bytes::from(
        DiscoveryResponse {
            nonce: nonce.to_string(),
            ..DiscoveryResponse::default()
        }
        .encode_to_vec(),
    )
}

fn control_plane(identifier: &str) -> envoy_types::pb::envoy::config::core::v3::ControlPlane {
    envoy_types::pb::envoy::config::core::v3::ControlPlane {
        identifier: identifier.to_string(),
    }
}

/// The cache's maps stay usable if a thread panicked while holding one (they hold only
/// complete entries).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Any;

    #[test]
    fn a_shared_body_and_a_nonce_decode_as_one_response() {
        let collection = PublishedCollection {
            version: "7".into(),
            resources: Arc::new(vec![Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![1, 2, 3],
            }]),
            ..PublishedCollection::default()
        };
        let scope = PeerScope::default();
        let encoded = collection.sotw_response("t", "t", &scope, "cp-1");
        let mut wire = encoded.body.to_vec();
        wire.extend_from_slice(&nonce_field("42-1"));
        let decoded = DiscoveryResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.version_info, "7");
        assert_eq!(decoded.nonce, "42-1");
        assert_eq!(decoded.type_url, "t");
        assert_eq!(decoded.resources.len(), 1);
        assert_eq!(decoded.control_plane.unwrap().identifier, "cp-1");
        // Encoded once: a second proxy of the same scope gets the same bytes.
        let again = collection.sotw_response("t", "t", &scope, "cp-1");
        assert!(Arc::ptr_eq(&encoded, &again));

        let delta = collection.delta_response("t", "t", &scope, "cp-1", &Versions::new(), None);
        let mut wire = delta.body.to_vec();
        wire.extend_from_slice(&nonce_field("42-2"));
        let decoded = DeltaDiscoveryResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.nonce, "42-2");
        assert_eq!(decoded.system_version_info, "7");
        assert_eq!(decoded.resources.len(), 1);
        assert_eq!(decoded.resources[0].name, "0");
    }
}
