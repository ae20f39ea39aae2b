//! An in-test Kubernetes API server for `sluice control --kube`: no real one can run here. It
//! follows the list/watch protocol as the Kubernetes API documents it ("Efficient detection of
//! changes", "Retrieving large results sets in chunks"), so kube-rs, the real client, sees
//! what a cluster would show it:
//! - a list answers with the collection's `resourceVersion`; `limit` pages it, with a
//!   `continue` token that serves the rest of the same snapshot;
//! - a watch from a `resourceVersion` sends every change after it (`ADDED`, `MODIFIED`,
//!   `DELETED`, each object carrying its own `resourceVersion`), then changes as they happen,
//!   and `BOOKMARK`s when asked (`allowWatchBookmarks`); it ends after `timeoutSeconds`;
//! - a watch from a version older than the history kept gets an `ERROR` event with a `Status`
//!   of code 410 (`Expired`, "too old resource version"), and the client must list again;
//! - `fieldSelector` on `metadata.name`, `metadata.namespace` and `type` (`=`, `!=`).
//!
//! Tests change the objects while clients watch ([`FakeApiServer::apply`], `delete`), cut every
//! watch connection (`cut_watches`) and forget the history (`compact`). The same controls are
//! HTTP endpoints under `/fake/` for the `fake-apiserver` binary that end-to-end tests run in a
//! pod's network namespace. This is test code: nothing in sluice depends on it.
//!
//! HTTP/1.1 by hand on std threads (one per connection, keep-alive; chunked watch bodies):
//! the e2e crate stays free of an HTTP stack.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The kinds clients may create and replace (what sluice writes): Leases and ConfigMaps.
const WRITABLE: &[&str] = &["leases", "configmaps"];

/// A kind the fake serves: its API group/version and its plural.
struct Kind {
    group_version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

const KINDS: &[Kind] = &[
    kind("v1", "Service", "services"),
    kind("v1", "Pod", "pods"),
    kind("v1", "ConfigMap", "configmaps"),
    kind("v1", "Secret", "secrets"),
    kind("v1", "Namespace", "namespaces"),
    kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    kind(
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    ),
    kind(
        "networking.istio.io/v1",
        "DestinationRule",
        "destinationrules",
    ),
    kind("networking.istio.io/v1", "ServiceEntry", "serviceentries"),
    kind("networking.istio.io/v1", "Gateway", "gateways"),
    kind("networking.istio.io/v1", "Sidecar", "sidecars"),
    kind("networking.istio.io/v1", "WorkloadEntry", "workloadentries"),
    kind(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    kind(
        "security.istio.io/v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    kind(
        "security.istio.io/v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    kind("telemetry.istio.io/v1", "Telemetry", "telemetries"),
    kind("coordination.k8s.io/v1", "Lease", "leases"),
    kind("authentication.k8s.io/v1", "TokenReview", "tokenreviews"),
    kind("networking.k8s.io/v1", "Ingress", "ingresses"),
    kind("networking.k8s.io/v1", "IngressClass", "ingressclasses"),
];

const fn kind(group_version: &'static str, kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group_version,
        kind,
        plural,
    }
}

/// The collection an object belongs to: (group, plural). Istio's older versions
/// (`v1alpha3`, `v1beta1`) are the same collection, as the API server converts them.
fn collection_of(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    KINDS.iter().find(|k| {
        k.kind == kind && k.group_version.rsplit_once('/').map_or("", |(g, _)| g) == group
    })
}

/// A kubeconfig that points a client at the fake API server at `addr` (plain HTTP, no
/// credentials).
pub fn kubeconfig(addr: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
contexts:
- name: fake
  context: {{cluster: fake, user: nobody}}
current-context: fake
users:
- name: nobody
  user: {{}}
"
    )
}

/// One change, as a watch sends it.
struct Change {
    version: u64,
    plural: &'static str,
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    /// plural → (namespace, name) → object.
    objects: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    /// Changes at or before this version are forgotten: watches from there get 410.
    compacted: u64,
    /// Bumped by `cut_watches`: a watch started before ends.
    cuts: u64,
    /// While set, new watches wait (`hold_watches`): a test makes its changes in between.
    held: bool,
    /// Pages not served yet: token → (the list's version, the rest of its items).
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
    /// Every request's method and target, in order.
    requests: Vec<String>,
    /// Plurals answered 404, as for a CRD that is not installed.
    uninstalled: HashSet<&'static str>,
    /// Service-account tokens the TokenReview API vouches for: token → (user name, audiences).
    tokens: HashMap<String, (String, Vec<String>)>,
    /// While set, every write to an object (status patches included) is answered with this
    /// code, as an overloaded or failing API server would.
    refused_writes: Option<u16>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl FakeApiServer {
    /// Serves on `listener` on threads of its own.
    pub fn start(listener: TcpListener) -> FakeApiServer {
        let addr = listener.local_addr().expect("a bound listener");
        let server = FakeApiServer {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                changed: Condvar::new(),
            }),
            addr,
        };
        let accept = server.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let server = accept.clone();
                std::thread::spawn(move || server.serve_connection(conn));
            }
        });
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig that points a client at this server, without credentials.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.addr.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces `object` (with `apiVersion`, `kind`, `metadata.name`), as
    /// `kubectl apply` would; returns its new `resourceVersion`.
    pub fn apply(&self, object: Value) -> u64 {
        let mut state = self.lock();
        let (version, _) = Self::store(&mut state, object);
        drop(state);
        self.inner.changed.notify_all();
        version
    }

    /// Stores `object` under `state`'s lock (so a check made under the same lock holds): its
    /// new `resourceVersion` and the object as stored.
    fn store(state: &mut State, mut object: Value) -> (u64, Value) {
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let kind_name = object["kind"].as_str().unwrap_or("").to_string();
        let kind = collection_of(&api_version, &kind_name).unwrap_or_else(|| {
            panic!("the fake API server does not serve {api_version} {kind_name}")
        });
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        state.version += 1;
        let version = state.version;
        let existing = state
            .objects
            .get(kind.plural)
            .and_then(|m| m.get(&(ns.clone(), name.clone())))
            .cloned();
        object["apiVersion"] = json!(kind.group_version);
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(version.to_string());
        meta["uid"] = existing.as_ref().map_or_else(
            || json!(format!("uid-{version}")),
            |e| e["metadata"]["uid"].clone(),
        );
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = existing.as_ref().map_or_else(
                || {
                    json!(format!(
                        "2026-12-07T00:{:02}:{:02}Z",
                        (version / 60) % 60,
                        version % 60
                    ))
                },
                |e| e["metadata"]["creationTimestamp"].clone(),
            );
        }
        state
            .objects
            .entry(kind.plural)
            .or_default()
            .insert((ns, name), object.clone());
        state.history.push(Change {
            version,
            plural: kind.plural,
            event: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        });
        (version, object)
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let kind = collection_of(api_version, kind)
            .unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"));
        let mut state = self.lock();
        let Some(mut object) = state
            .objects
            .get_mut(kind.plural)
            .and_then(|m| m.remove(&(namespace.to_string(), name.to_string())))
        else {
            return false;
        };
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state.history.push(Change {
            version,
            plural: kind.plural,
            event: "DELETED",
            object,
        });
        drop(state);
        self.inner.changed.notify_all();
        true
    }

    /// The object as stored (what a `GET` answers), if there is one.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = collection_of(api_version, kind)
            .unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"));
        self.lock()
            .objects
            .get(kind.plural)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Ends every watch in progress, as a lost connection or an API server restart would.
    pub fn cut_watches(&self) {
        self.lock().cuts += 1;
        self.inner.changed.notify_all();
    }

    /// Makes new watches wait until [`FakeApiServer::release_watches`], so that what a test
    /// changes after cutting the watches happens while no client watches.
    pub fn hold_watches(&self) {
        self.lock().held = true;
    }

    pub fn release_watches(&self) {
        self.lock().held = false;
        self.inner.changed.notify_all();
    }

    /// Forgets the history up to now, as etcd's compaction does: a watch from an older
    /// version gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.version;
        state.history.clear();
    }

    /// Answers 404 for the kind with this plural until [`FakeApiServer::install`], as the API
    /// server does for a custom resource whose CRD is not installed.
    pub fn uninstall(&self, plural: &str) {
        let kind = KINDS
            .iter()
            .find(|k| k.plural == plural)
            .unwrap_or_else(|| panic!("the fake API server does not serve {plural}"));
        self.lock().uninstalled.insert(kind.plural);
    }

    pub fn install(&self, plural: &str) {
        self.lock().uninstalled.remove(plural);
    }

    /// Makes `token` a valid service-account token of `namespace/service_account` for
    /// `audiences`, as TokenReview will say.
    pub fn add_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) {
        self.lock().tokens.insert(
            token.to_string(),
            (
                format!("system:serviceaccount:{namespace}:{service_account}"),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    /// Answers every write to an object with `code` (e.g. 500) until called with `None`.
    pub fn refuse_writes(&self, code: Option<u16>) {
        self.lock().refused_writes = code;
    }

    /// Makes `token` invalid (expired), as TokenReview will say.
    pub fn remove_token(&self, token: &str) {
        self.lock().tokens.remove(token);
    }

    /// A TokenReview's answer, as the API server's token authenticator gives it: unknown
    /// tokens and tokens for none of the asked audiences are not authenticated.
    fn token_review(&self, conn: &mut TcpStream, body: &[u8]) -> bool {
        let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
            return send(conn, 400, &status_body(400, "BadRequest", "not JSON"));
        };
        let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let known = self.lock().tokens.get(&token).cloned();
        review["status"] = match known {
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
            Some((username, audiences)) => {
                let granted: Vec<&String> = audiences
                    .iter()
                    .filter(|a| wanted.is_empty() || wanted.contains(a))
                    .collect();
                if granted.is_empty() {
                    json!({"authenticated": false, "error": format!(
                        "token audiences {audiences:?} is invalid for the target audiences {wanted:?}")})
                } else {
                    json!({"authenticated": true, "audiences": granted,
                           "user": {"username": username, "groups": ["system:serviceaccounts"]}})
                }
            }
        };
        send(conn, 201, &review)
    }

    /// Every request so far (`GET /api/v1/services?limit=500`, …).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn serve_connection(&self, conn: TcpStream) {
        let Ok(read_half) = conn.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut conn = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            self.lock().requests.push(format!("{method} {target}"));
            let keep = self.respond(&mut conn, &method, &target, &body);
            if !keep {
                return;
            }
        }
    }

    /// Answers one request; false when the connection is done.
    fn respond(&self, conn: &mut TcpStream, method: &str, target: &str, body: &[u8]) -> bool {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        if let Some(control) = path.strip_prefix("/fake/") {
            return self.control(conn, method, control, body);
        }
        let Some(target) = route(path).filter(|t| {
            let uninstalled = self.lock().uninstalled.contains(t.kind.plural);
            !uninstalled
        }) else {
            return send(
                conn,
                404,
                &status_body(404, "NotFound", &format!("no route {path}")),
            );
        };
        if let Some(name) = &target.name {
            return self.object(conn, method, &target, name, body);
        }
        if method == "POST" && WRITABLE.contains(&target.kind.plural) {
            return self.create(conn, &target, body);
        }
        if method == "POST" && target.kind.plural == "tokenreviews" {
            return self.token_review(conn, body);
        }
        if method != "GET" {
            return send(
                conn,
                405,
                &status_body(405, "MethodNotAllowed", "read-only fake"),
            );
        }
        let (kind, namespace) = (target.kind, target.namespace);
        let selector =
            match FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str)) {
                Ok(s) => s,
                Err(message) => return send(conn, 400, &status_body(400, "BadRequest", &message)),
            };
        let filter = |obj: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"] == *ns)
                && selector.matches(obj)
        };
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        if watch {
            self.watch(conn, kind, &query, &filter);
            return false;
        }
        self.list(conn, kind, &query, &filter)
    }

    /// `POST` of a new object of a [`WRITABLE`] kind: 409 AlreadyExists if there is one.
    fn create(&self, conn: &mut TcpStream, target: &Target, body: &[u8]) -> bool {
        let Some(object) = written_object(target, body) else {
            return send(conn, 400, &status_body(400, "BadRequest", "not JSON"));
        };
        let key = (
            target.namespace.clone().unwrap_or_default(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        let mut state = self.lock();
        if state
            .objects
            .get(target.kind.plural)
            .is_some_and(|m| m.contains_key(&key))
        {
            drop(state);
            let message = format!("{} {:?} already exists", target.kind.plural, key.1);
            return send(conn, 409, &status_body(409, "AlreadyExists", &message));
        }
        let (_, stored) = Self::store(&mut state, object);
        drop(state);
        self.inner.changed.notify_all();
        send(conn, 201, &stored)
    }

    /// One object: `GET` it, `PATCH` its `status` with a JSON merge patch, or `PUT` one of a
    /// [`WRITABLE`] kind (replaced only if the body's `resourceVersion` is the stored one, else
    /// 409 Conflict, as the API server's optimistic concurrency).
    fn object(
        &self,
        conn: &mut TcpStream,
        method: &str,
        target: &Target,
        name: &str,
        body: &[u8],
    ) -> bool {
        let key = (
            target.namespace.clone().unwrap_or_default(),
            name.to_string(),
        );
        let mut state = self.lock();
        if let (Some(code), false) = (state.refused_writes, method == "GET") {
            drop(state);
            return send(
                conn,
                code,
                &status_body(code, "InternalError", "writes are refused for now"),
            );
        }
        let Some(mut object) = state
            .objects
            .get(target.kind.plural)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            drop(state);
            return send(
                conn,
                404,
                &status_body(404, "NotFound", &format!("{name} not found")),
            );
        };
        match (method, target.status) {
            ("GET", _) => {
                drop(state);
                send(conn, 200, &object)
            }
            ("PUT", false) if WRITABLE.contains(&target.kind.plural) => {
                let Some(replacement) = written_object(target, body) else {
                    drop(state);
                    return send(conn, 400, &status_body(400, "BadRequest", "not JSON"));
                };
                if replacement["metadata"]["resourceVersion"]
                    != object["metadata"]["resourceVersion"]
                {
                    drop(state);
                    let message = format!(
                        "Operation cannot be fulfilled on {} {name:?}: the object has been \
                         modified; please apply your changes to the latest version and try again",
                        target.kind.plural
                    );
                    return send(conn, 409, &status_body(409, "Conflict", &message));
                }
                let (_, stored) = Self::store(&mut state, replacement);
                drop(state);
                self.inner.changed.notify_all();
                send(conn, 200, &stored)
            }
            ("PATCH", true) => {
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    drop(state);
                    return send(conn, 400, &status_body(400, "BadRequest", "not JSON"));
                };
                merge(&mut object["status"], &patch["status"]);
                state.version += 1;
                let version = state.version;
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                state
                    .objects
                    .entry(target.kind.plural)
                    .or_default()
                    .insert(key, object.clone());
                state.history.push(Change {
                    version,
                    plural: target.kind.plural,
                    event: "MODIFIED",
                    object: object.clone(),
                });
                drop(state);
                self.inner.changed.notify_all();
                send(conn, 200, &object)
            }
            _ => {
                drop(state);
                send(
                    conn,
                    405,
                    &status_body(405, "MethodNotAllowed", "only status is written"),
                )
            }
        }
    }

    fn list(
        &self,
        conn: &mut TcpStream,
        kind: &'static Kind,
        query: &HashMap<String, String>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> bool {
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut state = self.lock();
        let (version, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match state.pages.remove(token) {
                Some(page) => page,
                None => {
                    drop(state);
                    return send(
                        conn,
                        410,
                        &status_body(410, "Expired", "the continue token has expired"),
                    );
                }
            },
            None => (
                state.version,
                state
                    .objects
                    .get(kind.plural)
                    .map(|m| m.values().filter(|o| filter(o)).cloned().collect())
                    .unwrap_or_default(),
            ),
        };
        let rest = if items.len() > limit {
            items.split_off(limit)
        } else {
            Vec::new()
        };
        let mut metadata = json!({"resourceVersion": version.to_string()});
        if !rest.is_empty() {
            state.next_token += 1;
            let token = format!("page-{}", state.next_token);
            metadata["remainingItemCount"] = json!(rest.len());
            metadata["continue"] = json!(token);
            state.pages.insert(token, (version, rest));
        }
        drop(state);
        let body = json!({
            "apiVersion": kind.group_version,
            "kind": format!("{}List", kind.kind),
            "metadata": metadata,
            "items": items,
        });
        send(conn, 200, &body)
    }

    fn watch(
        &self,
        conn: &mut TcpStream,
        kind: &'static Kind,
        query: &HashMap<String, String>,
        filter: &dyn Fn(&Value) -> bool,
    ) {
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        let started = Instant::now();
        let mut state = self.lock();
        while state.held {
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let cuts = state.cuts;
        if from < state.compacted {
            let message = format!("too old resource version: {from} ({})", state.compacted);
            drop(state);
            let event = json!({"type": "ERROR", "object": status_body(410, "Expired", &message)});
            let _ = chunk(conn, &event).and_then(|()| conn.write_all(b"0\r\n\r\n"));
            return;
        }
        let mut sent = from;
        let mut last_bookmark = Instant::now();
        loop {
            let events: Vec<Value> = state
                .history
                .iter()
                .filter(|c| c.version > sent && c.plural == kind.plural && filter(&c.object))
                .map(|c| json!({"type": c.event, "object": c.object}))
                .collect();
            sent = state.version;
            let now_version = state.version;
            drop(state);
            for event in events {
                if chunk(conn, &event).is_err() {
                    return;
                }
            }
            if bookmarks && last_bookmark.elapsed() >= Duration::from_millis(500) {
                last_bookmark = Instant::now();
                let bookmark = json!({"type": "BOOKMARK", "object": {
                    "apiVersion": kind.group_version,
                    "kind": kind.kind,
                    "metadata": {"resourceVersion": now_version.to_string()},
                }});
                if chunk(conn, &bookmark).is_err() {
                    return;
                }
            }
            state = self.lock();
            if state.cuts != cuts || started.elapsed() >= timeout {
                break;
            }
            if state.version == sent {
                state = self
                    .inner
                    .changed
                    .wait_timeout(state, Duration::from_millis(200))
                    .map(|(s, _)| s)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if state.cuts != cuts {
                break;
            }
        }
        drop(state);
        let _ = conn.write_all(b"0\r\n\r\n");
    }

    /// `/fake/apply` (a JSON object, or `{"items": [...]}`), `/fake/delete` (`{"apiVersion",
    /// "kind", "metadata": {"namespace", "name"}}`), `/fake/cut`, `/fake/compact`,
    /// `/fake/hold`, `/fake/release`, `/fake/requests`.
    fn control(&self, conn: &mut TcpStream, method: &str, what: &str, body: &[u8]) -> bool {
        if method != "POST" && what != "requests" {
            return send(conn, 405, &json!({"error": "POST"}));
        }
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match what {
            "apply" => {
                let objects = match value.get("items").and_then(Value::as_array) {
                    Some(items) => items.clone(),
                    None => vec![value],
                };
                let versions: Vec<u64> = objects.into_iter().map(|o| self.apply(o)).collect();
                send(conn, 200, &json!({"resourceVersions": versions}))
            }
            "delete" => {
                let deleted = self.delete(
                    value["apiVersion"].as_str().unwrap_or(""),
                    value["kind"].as_str().unwrap_or(""),
                    value["metadata"]["namespace"].as_str().unwrap_or(""),
                    value["metadata"]["name"].as_str().unwrap_or(""),
                );
                send(
                    conn,
                    if deleted { 200 } else { 404 },
                    &json!({"deleted": deleted}),
                )
            }
            "token" => {
                let audiences: Vec<&str> = value["audiences"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                self.add_token(
                    value["token"].as_str().unwrap_or(""),
                    value["namespace"].as_str().unwrap_or(""),
                    value["serviceAccount"].as_str().unwrap_or(""),
                    &audiences,
                );
                send(conn, 200, &json!({}))
            }
            "cut" => {
                self.cut_watches();
                send(conn, 200, &json!({}))
            }
            "compact" => {
                self.compact();
                send(conn, 200, &json!({}))
            }
            "hold" => {
                self.hold_watches();
                send(conn, 200, &json!({}))
            }
            "release" => {
                self.release_watches();
                send(conn, 200, &json!({}))
            }
            "requests" => send(conn, 200, &json!(self.requests())),
            _ => send(conn, 404, &json!({"error": "unknown control"})),
        }
    }
}

/// What a request path names: a collection, or one object (and its `status`).
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]`, or the same under
/// `/apis/GROUP/VERSION`.
fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_string()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_string()), true),
        _ => return None,
    };
    let kind = KINDS
        .iter()
        .find(|k| k.group_version == group_version && k.plural == plural)?;
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

/// A client's object for `target` (a create or replace body), with the kind and namespace of
/// the URL it was sent to; `None` if it is not JSON.
fn written_object(target: &Target, body: &[u8]) -> Option<Value> {
    let mut object = serde_json::from_slice::<Value>(body).ok()?;
    object["apiVersion"] = json!(target.kind.group_version);
    object["kind"] = json!(target.kind.kind);
    object["metadata"]["namespace"] = json!(target.namespace.clone().unwrap_or_default());
    Some(object)
}

/// The field selectors the fake understands: `field=value` and `field!=value`, comma-joined,
/// on `metadata.name`, `metadata.namespace` and `type`.
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = match term.split_once("!=") {
                Some((f, v)) => (f, false, v),
                None => match term.split_once('=') {
                    Some((f, v)) => (f.trim_end_matches('='), true, v),
                    None => return Err(format!("invalid field selector {term:?}")),
                },
            };
            if !["metadata.name", "metadata.namespace", "type"].contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => obj["type"].as_str(),
            }
            .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A whole response with a JSON body; true (the connection may serve another request) unless
/// writing failed.
fn send(conn: &mut TcpStream, code: u16, body: &Value) -> bool {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())
        .and_then(|()| conn.write_all(body.as_bytes()))
        .is_ok()
}

/// One watch event as a chunk of a chunked body (a JSON object and a newline).
fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string();
    line.push('\n');
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}
