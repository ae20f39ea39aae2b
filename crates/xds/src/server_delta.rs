//! Delta xDS (`DeltaAggregatedResources`): each response carries only the resources that are new
//! or changed for this proxy since what it holds, and the names of those it must drop.
//!
//! The protocol (Envoy's "incremental xDS"): the first request of a type subscribes to it
//! (sluice serves every collection as a wildcard subscription) and names, in
//! `initial_resource_versions`, what the proxy already holds from an earlier stream, so a
//! reconnect resends only what changed meanwhile. A resource's version here is a digest of its
//! encoded bytes. A NACK (a request with `error_detail`) means the proxy kept what it had: the
//! next push is computed from what it last ACKed.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use crate::server::{
    admitted, published_collection, PeerScope, Published, PublishedCollection, StreamPeer,
    TypeStatus,
};
use crate::Any;

/// Name → version, as a proxy holds a collection.
type Versions = BTreeMap<String, String>;

/// One collection on one delta stream.
struct DeltaType {
    /// What the proxy holds once it ACKs what was sent last.
    sent: Versions,
    /// What the proxy holds for sure (its last ACK, or what it said it held).
    acked: Versions,
    sent_nonce: String,
    sent_at: Option<Instant>,
    /// Whether anything was sent on this stream yet (the first answer is sent even when empty,
    /// so the proxy knows the collection is complete).
    answered: bool,
    /// The collection version the last push looked at: a collection whose version has not
    /// moved since is not looked at again.
    seen_version: Option<String>,
    status: TypeStatus,
}

pub(crate) struct DeltaState {
    peer: StreamPeer,
    types: BTreeMap<String, DeltaType>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl DeltaState {
    pub(crate) fn new(
        peer: StreamPeer,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> DeltaState {
        DeltaState {
            peer,
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        }
    }

    pub(crate) async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let mut config = self.peer.server.config.clone();
        config.mark_unchanged();
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        if self.on_request(request).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let published = config.borrow_and_update().clone();
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    let mut failed = false;
                    for type_url in types {
                        if self.push(&type_url, &published).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    self.update_status();
                    if failed {
                        break;
                    }
                }
            }
        }
        self.peer.disconnected();
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), ()> {
        if let Err(status) = self.peer.identify(request.node.as_ref()) {
            let _ = self.tx.send(Err(status)).await;
            return Err(());
        }
        let type_url = request.type_url.clone();
        match self.types.get_mut(&type_url) {
            None => {
                let held: Versions = request.initial_resource_versions.into_iter().collect();
                self.types.insert(
                    type_url.clone(),
                    DeltaType {
                        sent: held.clone(),
                        acked: held,
                        sent_nonce: String::new(),
                        sent_at: None,
                        answered: false,
                        seen_version: None,
                        status: TypeStatus::default(),
                    },
                );
                let published = self.peer.server.config.borrow().clone();
                self.push(&type_url, &published).await?;
            }
            Some(state) => {
                if request.response_nonce.is_empty() || request.response_nonce != state.sent_nonce {
                    // A stale answer, or a change of subscription (every collection is served
                    // whole, so there is nothing to change).
                    return Ok(());
                }
                if let Some(error) = &request.error_detail {
                    self.peer
                        .server
                        .events
                        .rejected(&self.peer.node_id, &type_url, &error.message);
                    tracing::warn!(
                        node = %self.peer.node_id,
                        type_url = %type_url,
                        "proxy rejected the config: {}",
                        error.message
                    );
                    state.status.nacked = Some(error.message.clone());
                    // It kept what it had: the next push starts from there.
                    state.sent = state.acked.clone();
                } else {
                    state.acked = state.sent.clone();
                    state.status.acked = state.status.sent.clone();
                    state.status.nacked = None;
                    if let Some(at) = state.sent_at {
                        self.peer.server.events.acked(&type_url, at.elapsed());
                    }
                }
            }
        }
        self.update_status();
        Ok(())
    }

    /// Sends what changed in `type_url` for this proxy since what it holds, if anything did
    /// (and always the first time, so the proxy knows the collection is complete).
    async fn push(&mut self, type_url: &str, published: &Published) -> Result<(), ()> {
        let Some(collection) = published_collection(published, type_url) else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        // After a NACK the proxy may hold less than was sent: look again whatever the version.
        if state.answered
            && state.status.nacked.is_none()
            && state.seen_version.as_deref() == Some(collection.version.as_str())
        {
            return Ok(());
        }
        state.seen_version = Some(collection.version.clone());
        let (current, withheld) = entries(collection, &self.peer.scope);
        let changed: Vec<Resource> = current
            .iter()
            .filter(|(name, (version, _))| state.sent.get(*name) != Some(version))
            .map(|(name, (version, any))| Resource {
                name: name.clone(),
                version: version.clone(),
                resource: Some(any.clone()),
                ..Resource::default()
            })
            .collect();
        let removed: Vec<String> = state
            .sent
            .keys()
            .filter(|name| !current.contains_key(*name))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() && state.answered {
            state.status.sent = collection.version.clone();
            if state.status.nacked.is_none() {
                state.status.acked = collection.version.clone();
            }
            return Ok(());
        }
        if withheld.0 > 0 {
            self.peer
                .server
                .events
                .scoped(type_url, withheld.0, withheld.1);
        }
        self.nonce += 1;
        let nonce = format!("{}-d{}", self.peer.id, self.nonce);
        let bytes = changed
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        let response = DeltaDiscoveryResponse {
            system_version_info: collection.version.clone(),
            resources: changed,
            removed_resources: removed,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
                identifier: self.peer.server.identifier.to_string(),
            }),
            ..DeltaDiscoveryResponse::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| ())?;
        let now = Instant::now();
        self.peer.server.events.pushed(
            type_url,
            published.at.map(|at| now - at).unwrap_or_default(),
            bytes,
        );
        state.sent = current.into_iter().map(|(n, (v, _))| (n, v)).collect();
        state.sent_nonce = nonce;
        // Convergence is timed from the change; a stream's first answer from the send.
        state.sent_at = Some(if state.answered {
            published.at.unwrap_or(now)
        } else {
            now
        });
        state.answered = true;
        state.status.sent = collection.version.clone();
        Ok(())
    }

    fn update_status(&self) {
        self.peer
            .record(self.types.iter().map(|(t, s)| (t, &s.status)));
    }
}

/// The resources of `collection` a proxy of `scope` receives, by name, with their versions;
/// and how many resources and bytes scoping withheld.
fn entries(
    collection: &PublishedCollection,
    scope: &PeerScope,
) -> (BTreeMap<String, (String, Any)>, (usize, usize)) {
    let (admitted, withheld) = admitted(collection, scope);
    let out = admitted
        .into_iter()
        .map(|i| {
            let version = format!("{:016x}", collection.digest(i));
            (
                collection.name(i),
                (version, collection.resources[i].clone()),
            )
        })
        .collect();
    (out, withheld)
}
