//! The ADS server side: state-of-the-world `StreamAggregatedResources`, as istiod serves it.
//!
//! The control plane publishes [`Published`] config (each collection already encoded, with the
//! version it last changed at) on a `watch` channel; every stream sends each collection it
//! subscribed to when it subscribes and whenever that collection's version moves, and reads
//! ACKs and NACKs back. Encoding happens once per publish, not once per proxy.
//!
//! Envoy's protocol rules followed here (envoy/api/v2/discovery.proto, "xDS REST and gRPC
//! protocol"): a request whose `response_nonce` is not the last nonce sent for its type is
//! stale and ignored; a request with `error_detail` is a NACK (the proxy keeps its previous
//! config, `version_info` is the version it still holds); any other request with the current
//! nonce is an ACK of the version it names. The first request of a type subscribes to it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use envoy_types::pb::google::protobuf::value::Kind;
use tokio::sync::watch;
use tonic::{Status, Streaming};

use crate::discovery::DiscoveryRequest;
pub use crate::server_responses::ResponseCache;
use crate::server_responses::{nonce_field, Encoded, ScopeKey};
use crate::server_wire::{Outgoing, ResponseSender};
use crate::Any;

/// One collection as published: its encoded resources and the version they were published at.
#[derive(Debug, Clone, Default)]
pub struct PublishedCollection {
    pub version: String,
    pub resources: Arc<Vec<Any>>,
    /// Who may receive each resource, index for index with `resources`; empty means everyone.
    pub audiences: Arc<Vec<Audience>>,
    /// Each resource's name (`namespace/name`), index for index; delta xDS names resources.
    /// Empty: the resources are named by their position.
    pub names: Arc<Vec<String>>,
    /// A digest of each resource's bytes, index for index, computed once per publish (see
    /// [`digest`]); empty: computed per stream when needed.
    pub digests: Arc<Vec<u64>>,
    /// Responses encoded from this collection, shared by every stream.
    pub responses: Arc<ResponseCache>,
}

/// The digest of an encoded resource that [`PublishedCollection::digests`] holds.
pub fn digest(any: &Any) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut hasher);
    hasher.finish()
}

impl PublishedCollection {
    /// The digest of resource `i`.
    pub(crate) fn digest(&self, i: usize) -> u64 {
        match self.digests.get(i) {
            Some(d) => *d,
            None => digest(&self.resources[i]),
        }
    }

    /// The name delta xDS knows resource `i` by.
    pub(crate) fn name(&self, i: usize) -> String {
        self.names
            .get(i)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| i.to_string())
    }

    /// The positions of the resources a proxy of `scope` receives from this collection (whose
    /// main type URL is `main`), and how many resources and bytes were withheld from it.
    pub(crate) fn admitted(&self, main: &str, scope: &PeerScope) -> (Vec<usize>, (usize, usize)) {
        let imports = scope.imports(main);
        let mut withheld = (0, 0);
        let mut out = Vec::with_capacity(self.resources.len());
        for (i, any) in self.resources.iter().enumerate() {
            let visible = self
                .audiences
                .get(i)
                .is_none_or(|audience| audience.admits(scope));
            let imported = imports.is_none_or(|set| set.imported.contains(&i));
            if visible && imported {
                out.push(i);
            } else {
                withheld.0 += 1;
                withheld.1 += any.value.len();
            }
        }
        (out, withheld)
    }
}

/// Which proxies a resource is for: the control plane decides (from `exportTo`, from a
/// Secret's namespace); the server only applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    /// Proxies in one of these namespaces.
    Namespaces(Arc<[String]>),
    /// Proxies in this namespace whose identity was proven by a client certificate.
    AuthenticatedIn(String),
    /// Nobody (`exportTo: ["~"]`).
    Nobody,
}

impl Audience {
    /// Whether a proxy of `scope` receives the resource.
    pub fn admits(&self, scope: &PeerScope) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Namespaces(namespaces) => namespaces.contains(&scope.namespace),
            Audience::AuthenticatedIn(namespace) => {
                scope.authenticated.is_some() && *namespace == scope.namespace
            }
            Audience::Nobody => false,
        }
    }
}

/// Who is at the other end of a stream, as far as scoping is concerned.
#[derive(Debug, Clone, Default)]
pub struct PeerScope {
    /// The proxy's namespace: from its certificate when it has one, else from its node.
    pub namespace: String,
    /// The SPIFFE ID its client certificate proved, if the stream is mutual TLS.
    pub authenticated: Option<String>,
    /// Its workload's labels (the node's `LABELS` metadata).
    pub labels: BTreeMap<String, String>,
    /// Whether it is a sidecar (an Istio node id `sidecar~…`): only sidecars take a Sidecar.
    pub is_sidecar: bool,
    /// What the Sidecar that applies to it imports, in the config being pushed.
    pub sidecar: Option<Arc<SidecarImports>>,
}

impl PeerScope {
    /// The resources of collection `main` the proxy's Sidecar imports; `None` when every
    /// resource is (no Sidecar applies, or it does not scope that collection).
    pub(crate) fn imports(&self, main: &str) -> Option<&ImportSet> {
        self.sidecar.as_ref()?.collections.get(main)
    }
}

/// Picks the Sidecar resource that applies to a proxy and says what it imports. The control
/// plane implements it with Istio's rules (it knows the config); the server asks it once per
/// stream and publish.
pub trait SelectSidecar: Send + Sync + std::fmt::Debug {
    /// What the Sidecar that applies to a proxy of `scope` imports, if one applies.
    fn select(&self, scope: &PeerScope) -> Option<Arc<SidecarImports>>;
}

/// What one Sidecar imports, as resolved for the proxies of one namespace.
#[derive(Debug, Default)]
pub struct SidecarImports {
    /// Names the Sidecar and the namespace (`istio-system/default for shop`).
    pub key: Arc<str>,
    /// The collections it scopes (by main type URL): which of their resources it imports.
    pub collections: BTreeMap<String, ImportSet>,
}

/// The positions of the resources of one collection that a Sidecar imports.
#[derive(Debug, Default)]
pub struct ImportSet {
    pub imported: std::collections::HashSet<usize>,
    /// A digest of `imported`: proxies whose Sidecars import the same resources receive the
    /// same response, and a change of what is imported is a change to push.
    pub digest: u64,
}

impl ImportSet {
    pub fn new(imported: std::collections::HashSet<usize>) -> ImportSet {
        use std::hash::{Hash, Hasher};
        let mut sorted: Vec<usize> = imported.iter().copied().collect();
        sorted.sort_unstable();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        sorted.hash(&mut hasher);
        ImportSet {
            imported,
            digest: hasher.finish(),
        }
    }
}

/// What a mutual-TLS connection proved about the peer: the listener's connections report it as
/// their tonic `ConnectInfo`, and tonic puts it in each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConnectInfo {
    pub remote: std::net::SocketAddr,
    /// The SPIFFE ID of the client certificate; `None` for a client without one (the port
    /// also serves the certificate service, whose callers have no certificate yet: they are
    /// served as on the plaintext port, and never receive Secrets).
    pub identity: Option<String>,
}

/// Everything the control plane serves at one moment.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Collection type URL → its content.
    pub collections: BTreeMap<String, PublishedCollection>,
    /// When this config was published (for convergence times).
    pub at: Option<Instant>,
    /// Which Sidecar applies to which proxy, for collections with `imported_by`.
    pub sidecars: Option<Arc<dyn SelectSidecar>>,
}

/// What the server reports as it works (the control plane turns these into istiod's metrics).
pub trait ServerEvents: Send + Sync + 'static {
    /// A proxy connected (`true`) or went away (`false`).
    fn connection(&self, _node_id: &str, _connected: bool) {}
    /// A collection was sent to a proxy: how long since it was published, and its size.
    fn pushed(&self, _type_url: &str, _since_publish: std::time::Duration, _bytes: usize) {}
    /// A proxy ACKed a version; `since_push` is the time from our send to its ACK.
    fn acked(&self, _type_url: &str, _since_publish: std::time::Duration) {}
    /// A proxy refused a collection.
    fn rejected(&self, _node_id: &str, _type_url: &str, _message: &str) {}
    /// Scoping kept `withheld` resources of a collection (and `bytes` of them) from a proxy.
    fn scoped(&self, _type_url: &str, _withheld: usize, _bytes: usize) {}
}

/// No-op events.
pub struct NoEvents;
impl ServerEvents for NoEvents {}

/// A collection's state on one stream, as `proxy-status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TypeStatus {
    /// The version last sent ("" when none yet).
    pub sent: String,
    /// The version the proxy last ACKed.
    pub acked: String,
    /// The message of the last NACK since the last ACK, if any.
    pub nacked: Option<String>,
}

/// One connected proxy, as `proxy-status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnectionStatus {
    pub node_id: String,
    pub peer: String,
    /// The replica serving it (this one's `identifier`).
    pub control_plane: String,
    /// The namespace its config is scoped to.
    pub namespace: String,
    /// The SPIFFE ID its client certificate proved (mutual-TLS port only).
    pub identity: Option<String>,
    /// Unix seconds.
    pub connected_at: u64,
    pub types: BTreeMap<String, TypeStatus>,
}

/// The ADS server: give tonic its [`AdsServer::service`].
#[derive(Clone)]
pub struct AdsServer {
    pub(crate) config: watch::Receiver<Arc<Published>>,
    pub(crate) events: Arc<dyn ServerEvents>,
    pub(crate) connections: Arc<Mutex<BTreeMap<u64, ConnectionStatus>>>,
    /// Name of this replica, sent as `control_plane.identifier`.
    pub(crate) identifier: Arc<str>,
    next_id: Arc<AtomicU64>,
}

impl AdsServer {
    pub fn new(
        config: watch::Receiver<Arc<Published>>,
        events: Arc<dyn ServerEvents>,
        identifier: &str,
    ) -> AdsServer {
        AdsServer {
            config,
            events,
            connections: Arc::default(),
            identifier: Arc::from(identifier),
            next_id: Arc::default(),
        }
    }

    /// Every connected proxy and the state of each of its collections.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.connections
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Who is at the other end of one stream, state of the world or delta: its connection, the node
/// it named in its first request, and the scope that gives it.
pub(crate) struct StreamPeer {
    pub(crate) server: AdsServer,
    pub(crate) id: u64,
    pub(crate) peer: String,
    pub(crate) node_id: String,
    pub(crate) scope: PeerScope,
    connected_at: u64,
    /// Responses sent (each one's nonce counts them).
    sent: u64,
}

impl StreamPeer {
    /// A new stream, from its request's extensions (where tonic's server puts what the
    /// connection proved: its address, and on the mutual-TLS port the peer's identity).
    pub(crate) fn new(server: &AdsServer, extensions: &http::Extensions) -> StreamPeer {
        let mtls = extensions.get::<MtlsConnectInfo>().cloned();
        let peer = extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|c| c.remote_addr())
            .or(mtls.as_ref().map(|m| m.remote))
            .map(|a| a.to_string())
            .unwrap_or_default();
        StreamPeer {
            server: server.clone(),
            id: server.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            node_id: String::new(),
            scope: PeerScope {
                authenticated: mtls.and_then(|m| m.identity),
                ..PeerScope::default()
            },
            connected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sent: 0,
        }
    }

    /// Takes the node from the stream's first request (nothing to do after that); the status
    /// that ends the stream when there is none, or when its namespace is not the one its
    /// certificate proves.
    pub(crate) fn identify(&mut self, node: Option<&crate::Node>) -> Result<(), Status> {
        if !self.node_id.is_empty() {
            return Ok(());
        }
        let Some(node) = node.filter(|n| !n.id.is_empty()) else {
            return Err(Status::invalid_argument(
                "the first request of a stream must carry node.id",
            ));
        };
        match node_namespace(node, self.scope.authenticated.as_deref()) {
            Ok(namespace) => self.scope.namespace = namespace,
            Err(message) => {
                tracing::warn!(node = %node.id, peer = %self.peer, "proxy refused: {message}");
                return Err(Status::permission_denied(message));
            }
        }
        self.scope.labels = node_labels(node);
        self.scope.is_sidecar = node.id.starts_with("sidecar~");
        self.node_id = node.id.clone();
        self.server.events.connection(&self.node_id, true);
        tracing::info!(node = %self.node_id, peer = %self.peer, "proxy connected");
        Ok(())
    }

    /// Picks the Sidecar that applies to this proxy in `published` (it may change with any
    /// publish: a Sidecar added, changed or removed).
    pub(crate) fn select_sidecar(&mut self, published: &Published) {
        self.scope.sidecar = match &published.sidecars {
            Some(select) if self.scope.is_sidecar => select.select(&self.scope),
            _ => None,
        };
    }

    /// Sends `encoded` with the stream's next nonce (unique on this replica), and reports the
    /// push. Returns the nonce and when it was sent.
    pub(crate) async fn send(
        &mut self,
        tx: &ResponseSender,
        type_url: &str,
        published: &Published,
        encoded: &Encoded,
    ) -> Result<(String, Instant), ()> {
        self.sent += 1;
        let nonce = format!("{}-{}", self.id, self.sent);
        if encoded.withheld.0 > 0 {
            self.server
                .events
                .scoped(type_url, encoded.withheld.0, encoded.withheld.1);
        }
        let out = Outgoing {
            body: encoded.body.clone(),
            nonce_field: nonce_field(&nonce),
        };
        tx.send(Ok(out)).await.map_err(|_| ())?;
        let now = Instant::now();
        self.server.events.pushed(
            type_url,
            published.at.map(|at| now - at).unwrap_or_default(),
            encoded.bytes,
        );
        Ok((nonce, now))
    }

    /// The proxy refused what it was sent of `type_url` (and keeps what it had): reported, and
    /// kept in `status` until its next ACK.
    pub(crate) fn nacked(&self, type_url: &str, status: &mut TypeStatus, message: &str) {
        self.server
            .events
            .rejected(&self.node_id, type_url, message);
        tracing::warn!(
            node = %self.node_id,
            type_url = %type_url,
            version = %status.sent,
            "proxy rejected the config: {message}"
        );
        status.nacked = Some(message.to_string());
    }

    /// The proxy applied `version` of `type_url`; `sent_at` times its convergence.
    pub(crate) fn acked(
        &self,
        type_url: &str,
        status: &mut TypeStatus,
        version: String,
        sent_at: Option<Instant>,
    ) {
        status.acked = version;
        status.nacked = None;
        if let Some(at) = sent_at {
            self.server.events.acked(type_url, at.elapsed());
        }
    }

    /// Publishes this stream's collections' state for `/debug/syncz`.
    pub(crate) fn record<'a>(&self, types: impl Iterator<Item = (&'a String, &'a TypeStatus)>) {
        let status = ConnectionStatus {
            node_id: self.node_id.clone(),
            peer: self.peer.clone(),
            control_plane: self.server.identifier.to_string(),
            namespace: self.scope.namespace.clone(),
            identity: self.scope.authenticated.clone(),
            connected_at: self.connected_at,
            types: types.map(|(t, s)| (t.clone(), s.clone())).collect(),
        };
        if let Ok(mut c) = self.server.connections.lock() {
            c.insert(self.id, status);
        }
    }

    /// The stream ended.
    pub(crate) fn disconnected(&self) {
        if !self.node_id.is_empty() {
            self.server.events.connection(&self.node_id, false);
            tracing::info!(node = %self.node_id, peer = %self.peer, "proxy disconnected");
        }
        if let Ok(mut c) = self.server.connections.lock() {
            c.remove(&self.id);
        }
    }
}

/// The collection a request's type URL names: by its main type URL or an alias
/// (`networking.istio.io/v1alpha3/ServiceEntry` is served what `…/v1/ServiceEntry` is).
/// Returns it with its main type URL.
pub(crate) fn published_collection<'a>(
    published: &'a Published,
    type_url: &str,
) -> Option<(&'a str, &'a PublishedCollection)> {
    let main = match published.collections.contains_key(type_url) {
        true => type_url,
        false => crate::collection(type_url)?.type_url,
    };
    published
        .collections
        .get_key_value(main)
        .map(|(k, c)| (k.as_str(), c))
}

/// What one stream has sent and been told, per collection.
struct StreamType {
    sent_version: Option<String>,
    /// The scope the last push was computed for: a publish that moves neither the version nor
    /// the scope (the Sidecar that applies) changes nothing for the proxy.
    sent_scope: Option<ScopeKey>,
    /// What the proxy was sent last, after scoping: a collection whose version moved but whose
    /// resources for this proxy did not is not sent again.
    sent_signature: Option<u64>,
    sent_nonce: String,
    sent_at: Option<Instant>,
    status: TypeStatus,
}

pub(crate) struct StreamState {
    peer: StreamPeer,
    types: BTreeMap<String, StreamType>,
    tx: ResponseSender,
}

impl StreamState {
    pub(crate) fn new(peer: StreamPeer, tx: ResponseSender) -> StreamState {
        StreamState {
            peer,
            types: BTreeMap::new(),
            tx,
        }
    }

    pub(crate) async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
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
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.peer.node_id, "ADS stream ended: {status}");
                        break;
                    }
                },
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let published = config.borrow_and_update().clone();
                    if self.push_changed(&published).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.peer.disconnected();
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<(), ()> {
        if let Err(status) = self.peer.identify(request.node.as_ref()) {
            let _ = self.tx.send(Err(status)).await;
            return Err(());
        }
        let type_url = request.type_url.clone();
        match self.types.get_mut(&type_url) {
            None => {
                self.types.insert(
                    type_url.clone(),
                    StreamType {
                        sent_version: None,
                        sent_scope: None,
                        sent_signature: None,
                        sent_nonce: String::new(),
                        sent_at: None,
                        status: TypeStatus {
                            acked: request.version_info.clone(),
                            ..TypeStatus::default()
                        },
                    },
                );
                let published = self.peer.server.config.borrow().clone();
                self.peer.select_sidecar(&published);
                self.push(&type_url, &published).await?;
            }
            Some(state) => {
                if request.response_nonce != state.sent_nonce {
                    // Stale: an answer to a response that a newer one has replaced.
                    return Ok(());
                }
                match &request.error_detail {
                    Some(error) => self
                        .peer
                        .nacked(&type_url, &mut state.status, &error.message),
                    None => self.peer.acked(
                        &type_url,
                        &mut state.status,
                        request.version_info.clone(),
                        state.sent_at,
                    ),
                }
            }
        }
        self.update_status();
        Ok(())
    }

    /// Sends every subscribed collection whose version (or scope for this proxy) moved.
    async fn push_changed(&mut self, published: &Published) -> Result<(), ()> {
        self.peer.select_sidecar(published);
        let scope = &self.peer.scope;
        let due: Vec<String> = self
            .types
            .iter()
            .filter(|(t, s)| {
                published_collection(published, t).is_some_and(|(main, c)| {
                    s.sent_version.as_deref() != Some(c.version.as_str())
                        || s.sent_scope.as_ref() != Some(&c.scope_key(main, scope))
                })
            })
            .map(|(t, _)| t.clone())
            .collect();
        for type_url in due {
            self.push(&type_url, published).await?;
        }
        self.update_status();
        Ok(())
    }

    /// Sends `type_url` as published. A collection not published yet (the control plane has
    /// not accepted its config, or does not serve the type) is not sent at all: an empty
    /// answer would be a config, and an open one.
    async fn push(&mut self, type_url: &str, published: &Published) -> Result<(), ()> {
        let Some((main, collection)) = published_collection(published, type_url) else {
            return Ok(());
        };
        let scope_key = collection.scope_key(main, &self.peer.scope);
        let encoded = collection.sotw_response(
            main,
            type_url,
            &self.peer.scope,
            &self.peer.server.identifier,
        );
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        state.sent_scope = Some(scope_key);
        if state.sent_signature == Some(encoded.signature) {
            // Nothing this proxy receives changed: record the version as sent and synced.
            state.sent_version = Some(collection.version.clone());
            return Ok(());
        }
        let (nonce, now) = self
            .peer
            .send(&self.tx, type_url, published, &encoded)
            .await?;
        if let Some(state) = self.types.get_mut(type_url) {
            // Convergence is timed from the change; a proxy's first answer on a new stream is
            // timed from the send (it did not wait for any change).
            state.sent_at = Some(match state.sent_version {
                Some(_) => published.at.unwrap_or(now),
                None => now,
            });
            state.sent_version = Some(collection.version.clone());
            state.sent_signature = Some(encoded.signature);
            state.sent_nonce = nonce;
            state.status.sent = collection.version.clone();
        }
        Ok(())
    }

    fn update_status(&self) {
        self.peer
            .record(self.types.iter().map(|(t, s)| (t, &s.status)));
    }
}

/// The node's `LABELS` metadata (string values only, as Istio writes them).
fn node_labels(node: &crate::Node) -> BTreeMap<String, String> {
    let Some(Kind::StructValue(labels)) = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| v.kind.as_ref())
    else {
        return BTreeMap::new();
    };
    labels
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// The namespace a proxy's config is scoped to. With a client certificate, the namespace of its
/// SPIFFE ID (`spiffe://TD/ns/NS/sa/SA`), and a node that claims another is refused, as istiod
/// refuses it; without one, the node's `NAMESPACE` metadata, else the namespace in an Istio
/// node id (`sidecar~IP~POD.NS~NS.svc.cluster.local`).
pub(crate) fn node_namespace(
    node: &crate::Node,
    authenticated: Option<&str>,
) -> Result<String, String> {
    let claimed = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("NAMESPACE"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .or_else(|| {
            let dns_domain = node.id.split('~').nth(3)?;
            Some(dns_domain.split('.').next()?.to_string())
        })
        .filter(|ns| !ns.is_empty());
    let Some(spiffe) = authenticated else {
        return Ok(claimed.unwrap_or_else(|| "default".to_string()));
    };
    let proven = spiffe
        .split('/')
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "ns")
        .map(|w| w[1].to_string())
        .ok_or_else(|| format!("client certificate {spiffe} names no namespace"))?;
    match claimed {
        Some(claimed) if claimed != proven => Err(format!(
            "node {} claims namespace {claimed}, but its certificate ({spiffe}) is for {proven}",
            node.id
        )),
        _ => Ok(proven),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    fn node(id: &str, namespace: Option<&str>) -> crate::Node {
        crate::Node {
            id: id.to_string(),
            metadata: namespace.map(|ns| Struct {
                fields: [(
                    "NAMESPACE".to_string(),
                    Value {
                        kind: Some(Kind::StringValue(ns.to_string())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..crate::Node::default()
        }
    }

    #[test]
    fn the_certificate_decides_the_namespace() {
        let id = "sidecar~10.0.0.1~app.shop~shop.svc.cluster.local";
        // Plaintext: the metadata, else the node id, else default.
        assert_eq!(node_namespace(&node(id, Some("web")), None).unwrap(), "web");
        assert_eq!(node_namespace(&node(id, None), None).unwrap(), "shop");
        assert_eq!(node_namespace(&node("x", None), None).unwrap(), "default");
        // Mutual TLS: the certificate's namespace; a node claiming another is refused.
        let spiffe = "spiffe://cluster.local/ns/shop/sa/app";
        assert_eq!(
            node_namespace(&node(id, None), Some(spiffe)).unwrap(),
            "shop"
        );
        assert_eq!(
            node_namespace(&node("x", None), Some(spiffe)).unwrap(),
            "shop"
        );
        let refused = node_namespace(&node(id, Some("web")), Some(spiffe)).unwrap_err();
        assert!(refused.contains("claims namespace web"), "{refused}");
        assert!(node_namespace(&node(id, None), Some("spiffe://cluster.local/sa/x")).is_err());
    }

    #[test]
    fn audiences_admit_whom_they_name() {
        let plain = PeerScope {
            namespace: "a".into(),
            ..PeerScope::default()
        };
        let proven = PeerScope {
            namespace: "a".into(),
            authenticated: Some("spiffe://cluster.local/ns/a/sa/gw".into()),
            ..PeerScope::default()
        };
        assert!(Audience::Everyone.admits(&plain));
        assert!(!Audience::Nobody.admits(&proven));
        let ns = Audience::Namespaces(Arc::from(vec!["a".to_string()]));
        assert!(ns.admits(&plain));
        assert!(!ns.admits(&PeerScope {
            namespace: "b".into(),
            ..PeerScope::default()
        }));
        let secret = Audience::AuthenticatedIn("a".into());
        assert!(!secret.admits(&plain), "never over plaintext");
        assert!(secret.admits(&proven));
        assert!(!secret.admits(&PeerScope {
            namespace: "b".into(),
            ..proven.clone()
        }));
    }
}
