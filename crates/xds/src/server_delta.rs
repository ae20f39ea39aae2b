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
use std::sync::Arc;
use std::time::Instant;

use tonic::Streaming;

use crate::discovery::DeltaDiscoveryRequest;
use crate::server::{published_collection, Published, StreamPeer, TypeStatus};
use crate::server_responses::{HeldId, ScopeKey, Versions};
use crate::server_wire::ResponseSender;

/// What a proxy holds of a collection: its names and versions, and, when it is what some
/// publish gave every proxy of a scope, which (so the response from there is shared).
#[derive(Clone)]
struct Held {
    versions: Arc<Versions>,
    id: Option<HeldId>,
}

/// One collection on one delta stream.
struct DeltaType {
    /// What the proxy holds once it ACKs what was sent last.
    sent: Held,
    /// What the proxy holds for sure (its last ACK, or what it said it held).
    acked: Held,
    sent_nonce: String,
    sent_at: Option<Instant>,
    /// Whether anything was sent on this stream yet (the first answer is sent even when empty,
    /// so the proxy knows the collection is complete).
    answered: bool,
    /// The collection version and scope the last push looked at: a publish that moves neither
    /// is not looked at again.
    seen: Option<(String, ScopeKey)>,
    status: TypeStatus,
}

pub(crate) struct DeltaState {
    peer: StreamPeer,
    types: BTreeMap<String, DeltaType>,
    tx: ResponseSender,
}

impl DeltaState {
    pub(crate) fn new(peer: StreamPeer, tx: ResponseSender) -> DeltaState {
        DeltaState {
            peer,
            types: BTreeMap::new(),
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
                    self.peer.select_sidecar(&published);
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
                let declared: Versions = request.initial_resource_versions.into_iter().collect();
                let held = Held {
                    // Holding nothing is what every new proxy holds; what a proxy says it
                    // holds is its own.
                    id: declared.is_empty().then_some(HeldId::Nothing),
                    versions: Arc::new(declared),
                };
                self.types.insert(
                    type_url.clone(),
                    DeltaType {
                        sent: held.clone(),
                        acked: held,
                        sent_nonce: String::new(),
                        sent_at: None,
                        answered: false,
                        seen: None,
                        status: TypeStatus::default(),
                    },
                );
                let published = self.peer.server.config.borrow().clone();
                self.peer.select_sidecar(&published);
                self.push(&type_url, &published).await?;
            }
            Some(state) => {
                if request.response_nonce.is_empty() || request.response_nonce != state.sent_nonce {
                    // A stale answer, or a change of subscription (every collection is served
                    // whole, so there is nothing to change).
                    return Ok(());
                }
                match &request.error_detail {
                    Some(error) => {
                        self.peer
                            .nacked(&type_url, &mut state.status, &error.message);
                        // It kept what it had: the next push starts from there.
                        state.sent = state.acked.clone();
                    }
                    None => {
                        state.acked = state.sent.clone();
                        let version = state.status.sent.clone();
                        self.peer
                            .acked(&type_url, &mut state.status, version, state.sent_at);
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
        let Some((main, collection)) = published_collection(published, type_url) else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let scope_key = collection.scope_key(main, &self.peer.scope);
        let seen = (collection.version.clone(), scope_key.clone());
        // After a NACK the proxy may hold less than was sent: look again whatever the version.
        if state.answered && state.status.nacked.is_none() && state.seen.as_ref() == Some(&seen) {
            return Ok(());
        }
        state.seen = Some(seen);
        let encoded = collection.delta_response(
            main,
            type_url,
            &self.peer.scope,
            &self.peer.server.identifier,
            &state.sent.versions,
            state.sent.id.clone(),
        );
        let now_held = Held {
            versions: encoded.holds.clone(),
            id: Some(HeldId::Published {
                version: collection.version.clone(),
                scope: scope_key,
            }),
        };
        if !encoded.changes && state.answered {
            // What it holds is what it would get (though perhaps from another publish).
            state.sent = now_held.clone();
            if state.status.nacked.is_none() {
                state.acked = now_held;
                state.status.acked = collection.version.clone();
            }
            state.status.sent = collection.version.clone();
            return Ok(());
        }
        let (nonce, now) = self
            .peer
            .send(&self.tx, type_url, published, &encoded)
            .await?;
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        state.sent = now_held;
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
