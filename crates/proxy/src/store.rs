//! The config store: watches `--config DIR` (or `--config FILE`), keeps the last good version of
//! every file, and publishes a freshly compiled [`Snapshot`] whenever the set of valid resources
//! changes.
//!
//! Fail closed, never more open than the operator wrote:
//! - a file that fails to decode or validate, or cannot be read (no permission, a FIFO, a
//!   dangling link, too large), is reported and its last good version keeps serving; a removed
//!   file removes its resources, a file emptied in place does not (delete it to withdraw); a
//!   `--config FILE` that disappears is reported and keeps serving (an editor that saves by
//!   renaming removes it for a moment; the operator cannot have meant "no config at all");
//! - the mesh config (`istio-system/istio`), once served, is only replaced by another valid one:
//!   if it disappears from a file that still exists (truncated, edited out), the last good one
//!   stays;
//! - at startup, before the proxy has ever been ready, a refused or unreadable file that may hold
//!   policy (mesh config, Sidecar, AuthorizationPolicy, PeerAuthentication, DestinationRule) keeps
//!   the [`ConfigGate`] closed: the proxy is not ready and its data listeners refuse traffic until
//!   the file is fixed;
//! - in the watch loop, a file modified in the last [`SETTLE`] is read at the next pass, so a file
//!   that is still being written is not applied half-written.
//!
//! The store runs on a thread of its own ([`ConfigStore::spawn`]): reading, decoding and
//! compiling never run on the data-plane workers. Swapping the snapshot never blocks the data
//! path: requests hold the `Arc<Snapshot>` they started with.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_api::decode::{list_config_files, read_config_file};
use sluice_api::{Diagnostic, Kind, Resource, Severity, Spec};
use sluice_model::{compile, ProxyIdentity, Snapshot};

/// How often the directory is re-read even without file-system events (events can be missed on
/// some mounts, and a rescan of a small directory is cheap).
const RESCAN_INTERVAL: Duration = Duration::from_millis(1000);

/// A file modified more recently than this may still be being written: it is read at the next
/// pass of the watch loop.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Stack of the config thread: decoding is bounded in depth, but compile and validation of a
/// large config deserve more room than a tokio worker's 2 MiB.
const CONFIG_THREAD_STACK: usize = 16 * 1024 * 1024;

/// At most this many diagnostics are kept in the status (and logged) per publish: a pathological
/// file must not turn into gigabytes of log or a `/config_dump` nobody can read.
const MAX_STATUS_DIAGNOSTICS: usize = 200;

/// What the binary's allocator does on the config thread. The allocator is the binary's choice,
/// so the binary says how the thread should use it; see [`set_allocator_hooks`].
#[derive(Debug, Clone, Copy)]
pub struct AllocatorHooks {
    /// Runs first on the config thread. The binary switches the thread's allocator cache off
    /// there: a cache hands a freed temporary's slot to the next allocation, so the resources a
    /// load keeps end up spread over pages that the parse's temporaries filled; without it they
    /// are packed from the lowest free address (2,003 resources: 2.4 MiB less resident,
    /// bench/README.md).
    pub thread_start: fn(),
    /// Runs after each snapshot the thread publishes. A compile allocates and frees megabytes,
    /// and the thread then sleeps until the next change: without a nudge the allocator keeps
    /// those pages as dirty pages awaiting decay, and a sidecar's resident memory stays at its
    /// compile peak.
    pub after_publish: fn(),
}

static ALLOCATOR_HOOKS: std::sync::OnceLock<AllocatorHooks> = std::sync::OnceLock::new();

/// Sets the config thread's [`AllocatorHooks`]. Set once; later calls are ignored.
pub fn set_allocator_hooks(hooks: AllocatorHooks) {
    let _ = ALLOCATOR_HOOKS.set(hooks);
}

/// Whether the data listeners may carry traffic. Closed until the configuration has been
/// accepted once without a refused policy file; never closed again by a config change.
#[derive(Debug)]
pub struct ConfigGate {
    open: AtomicBool,
}

impl ConfigGate {
    /// A gate that carries traffic (proxies built without a config store, in tests).
    pub fn open() -> ConfigGate {
        ConfigGate {
            open: AtomicBool::new(true),
        }
    }

    /// A gate that refuses traffic until `ConfigGate::set_open`.
    pub fn closed() -> ConfigGate {
        ConfigGate {
            open: AtomicBool::new(false),
        }
    }

    /// True when traffic may flow.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set_open(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Default for ConfigGate {
    fn default() -> Self {
        ConfigGate::open()
    }
}

#[derive(Debug, Clone)]
struct FileEntry {
    /// Hash of the bytes last read; `None` when the file could not be read.
    content_hash: Option<u64>,
    /// The resources of the last version of this file that decoded and validated cleanly.
    good: Vec<Resource>,
    /// Problems of the current version on disk.
    diagnostics: Vec<Diagnostic>,
    /// True when the current version on disk was refused (and `good` is an older version).
    refused: bool,
    /// The refused version may hold resources that make the proxy more restrictive.
    may_hold_policy: bool,
}

/// What the admin API shows about the configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStatus {
    pub config_dir: String,
    /// Files read, with the number of resources served from each and whether the version on disk
    /// was refused.
    pub files: Vec<FileStatus>,
    /// Errors and warnings of the files as they are on disk now, and of the compiled snapshot
    /// (at most `MAX_STATUS_DIAGNOSTICS`; `diagnostics_omitted` counts the rest).
    pub diagnostics: Vec<String>,
    pub diagnostics_omitted: usize,
    pub generation: u64,
    /// True once the configuration has been accepted; the data listeners carry traffic.
    pub ready: bool,
    /// Why the proxy is not ready (empty when ready).
    pub not_ready: Vec<String>,
}

/// One config file's state.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub path: String,
    pub resources: usize,
    pub refused: bool,
}

/// Owns the files' state and publishes snapshots.
pub struct ConfigStore {
    dir: PathBuf,
    proxy: ProxyIdentity,
    files: BTreeMap<PathBuf, FileEntry>,
    /// Directories or entries that could not be inspected at the last scan.
    hidden: Vec<Diagnostic>,
    /// The mesh ConfigMap served last, kept when it disappears from the files.
    mesh_last_good: Option<Resource>,
    /// First time each resource was seen, standing in for `creationTimestamp` when absent.
    first_seen: HashMap<(Kind, String, String), u64>,
    seen_counter: u64,
    generation: u64,
    snapshot: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
    gate: Arc<ConfigGate>,
    /// Reconciled with each snapshot here, on the config thread, before the data path sees it.
    balancers: Option<Arc<crate::balancer::Balancers>>,
    /// Fed by a control plane (`--xds`): the collections it has not yet sent in a form this
    /// store accepted. The proxy is not ready while any is missing. `None` for a folder.
    xds_waiting: Option<BTreeSet<String>>,
    /// Set by the control plane: receives every publish's resources instead of a compile.
    sink: Option<ResourceSink>,
    /// Whether `dir` is a folder to read (a store fed only by the Kubernetes API has none).
    folder: bool,
    /// The path prefixes of objects from other sources than the folder (see
    /// [`SourceUpdate`]), and those not listed once yet (the store is not ready while any is).
    source_prefixes: Vec<String>,
    sources_waiting: BTreeSet<String>,
    /// Runs with each compiled snapshot before the data path sees it (and before the gate
    /// opens): what must change together with the config, such as the access log's settings.
    before_publish: Option<SnapshotHook>,
}

/// See [`ConfigStore::before_publish`].
pub type SnapshotHook = Box<dyn Fn(&Snapshot) + Send>;

/// What a control plane does with the resources of each publish: (generation, resources in
/// creation order).
pub type ResourceSink = Box<dyn FnMut(u64, &[Resource]) + Send>;

/// One collection of resources as a control plane sent it, for [`ConfigStore::spawn_xds`].
pub struct CollectionUpdate {
    /// The collection (istiod's type URL, e.g. `networking.istio.io/v1alpha3/ServiceEntry`).
    pub collection: String,
    /// Its resources as YAML/JSON documents, in the form `--config` files take.
    pub text: String,
    /// Ok once applied; Err with what to NACK when refused (the last good version stays).
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Objects from another source than the folder (the Kubernetes API), for
/// [`ConfigStore::spawn_with_sources`]. Each object is a config file of its own, named by its
/// path (`kube:Service/ns/name`), so one that fails validation is refused alone and its last
/// good version keeps serving, as a folder's file would.
#[derive(Debug)]
pub enum SourceUpdate {
    /// Every object under `prefix` as the source lists it now (its first list, or a new one
    /// after its watch expired): the objects not in it are gone.
    Listed {
        prefix: String,
        objects: Vec<(String, String)>,
    },
    /// An object added or changed: its path and its text (YAML or JSON).
    Applied {
        path: String,
        text: String,
    },
    Deleted {
        path: String,
    },
}

/// The name a collection's resources go by in diagnostics and the store's status.
fn collection_path(collection: &str) -> PathBuf {
    PathBuf::from(format!("xds:{collection}"))
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Kinds whose loss could leave the proxy more open than the operator wrote.
const POLICY_KINDS: [&str; 7] = [
    "ConfigMap",
    "Sidecar",
    "AuthorizationPolicy",
    "PeerAuthentication",
    // Its loss stops DENY rules on request principals and claims from matching.
    "RequestAuthentication",
    "DestinationRule",
    // A List may hold any of them.
    "List",
];

/// Whether a refused file may hold policy: it names a policy kind, or no kind can be read from
/// it at all (a syntax error early in the file, binary garbage).
fn may_hold_policy(text: &str) -> bool {
    let mut kinds = text.lines().filter_map(|line| {
        let line = line.trim_start_matches([' ', '\t', '-', '{', ',']);
        let rest = line
            .strip_prefix("kind:")
            .or_else(|| line.strip_prefix("\"kind\":"))?;
        let value = rest.trim_start().trim_start_matches(['"', '\'']);
        let end = value
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(value.len());
        Some(&value[..end])
    });
    let mut any = false;
    let policy = kinds.any(|k| {
        any = true;
        POLICY_KINDS.contains(&k)
    });
    policy || !any
}

fn is_mesh_config(res: &Resource) -> bool {
    matches!(res.spec, Spec::ConfigMap { mesh: Some(_), .. })
        && (res.meta.namespace.as_str(), res.meta.name.as_str())
            == sluice_model::mesh::MESH_CONFIGMAP
}

fn modified_within(path: &Path, window: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < window)
}

impl ConfigStore {
    /// A store for `dir`, compiling for `proxy`. Call [`ConfigStore::rescan`] to load.
    pub fn new(dir: PathBuf, proxy: ProxyIdentity) -> ConfigStore {
        ConfigStore {
            status: Arc::new(ArcSwap::from_pointee(StoreStatus {
                config_dir: dir.display().to_string(),
                not_ready: vec!["configuration not loaded yet".to_string()],
                ..StoreStatus::default()
            })),
            dir,
            proxy,
            files: BTreeMap::new(),
            hidden: Vec::new(),
            mesh_last_good: None,
            first_seen: HashMap::new(),
            seen_counter: 0,
            generation: 0,
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            gate: Arc::new(ConfigGate::closed()),
            balancers: None,
            xds_waiting: None,
            sink: None,
            folder: true,
            source_prefixes: Vec::new(),
            sources_waiting: BTreeSet::new(),
            before_publish: None,
        }
    }

    /// A store with no folder, fed only by other sources ([`ConfigStore::add_source`]);
    /// `name` says where its config comes from (`kube://…`).
    pub fn without_folder(name: &str, proxy: ProxyIdentity) -> ConfigStore {
        let mut store = ConfigStore::new(PathBuf::from(name), proxy);
        store.folder = false;
        store
    }

    /// Takes objects from another source than the folder under paths that start with each of
    /// `prefixes` (`kube:Service/`, …); the store is not ready until each has been listed once
    /// ([`SourceUpdate::Listed`]).
    pub fn add_source(&mut self, prefixes: impl IntoIterator<Item = String>) {
        for prefix in prefixes {
            self.sources_waiting.insert(prefix.clone());
            self.source_prefixes.push(prefix);
        }
    }

    fn is_source_object(&self, path: &Path) -> bool {
        let path = path.to_string_lossy();
        self.source_prefixes.iter().any(|p| path.starts_with(p))
    }

    /// Applies one update from another source; whether anything changed.
    fn apply_source(&mut self, update: SourceUpdate) -> bool {
        match update {
            SourceUpdate::Listed { prefix, objects } => {
                let mut changed = self.sources_waiting.remove(&prefix);
                let listed: BTreeSet<PathBuf> =
                    objects.iter().map(|(p, _)| PathBuf::from(p)).collect();
                let gone: Vec<PathBuf> = self
                    .files
                    .keys()
                    .filter(|p| p.to_string_lossy().starts_with(&prefix) && !listed.contains(*p))
                    .cloned()
                    .collect();
                for path in gone {
                    self.files.remove(&path);
                    changed = true;
                }
                for (path, text) in objects {
                    changed |= self.load_if_changed(PathBuf::from(path), text.into_bytes());
                }
                changed
            }
            SourceUpdate::Applied { path, text } => {
                self.load_if_changed(PathBuf::from(path), text.into_bytes())
            }
            SourceUpdate::Deleted { path } => self.files.remove(Path::new(&path)).is_some(),
        }
    }

    /// A store fed by the control plane at `server` with `collections` (see
    /// [`ConfigStore::spawn_xds`]); not ready until every collection has been accepted once.
    pub fn new_xds(
        server: &str,
        collections: impl IntoIterator<Item = String>,
        proxy: ProxyIdentity,
    ) -> ConfigStore {
        let mut store = ConfigStore::new(PathBuf::from(format!("xds://{server}")), proxy);
        store.xds_waiting = Some(collections.into_iter().collect());
        store.status.store(Arc::new(StoreStatus {
            config_dir: store.dir.display().to_string(),
            not_ready: store.blocking_reasons(),
            ..StoreStatus::default()
        }));
        store
    }

    /// Runs `hook` with each snapshot before it is published (and before traffic may flow on
    /// it), on the config thread.
    pub fn before_publish(&mut self, hook: SnapshotHook) {
        self.before_publish = Some(hook);
    }

    /// Hands every publish's resources to `sink` instead of compiling a snapshot: the control
    /// plane keeps the store's validation and last-good rules and serves what it publishes.
    pub fn publish_to(&mut self, sink: ResourceSink) {
        self.sink = Some(sink);
    }

    /// Applies one collection as a control plane sent it (the whole collection: resources it
    /// no longer holds are withdrawn). A collection with an error is refused whole and its last
    /// good version keeps serving; the error, as `Kind ns/name: field: message` lines, is what
    /// to NACK with. Publishes when something changed.
    pub fn apply_collection(&mut self, collection: &str, text: &str) -> Result<(), String> {
        let (changed, result) = self.load_collection(collection, text);
        if changed || self.generation == 0 {
            self.publish();
        }
        result
    }

    /// Loads a collection without publishing; see [`ConfigStore::apply_collection`]. Returns
    /// whether anything changed (what is served, what is reported, or readiness).
    fn load_collection(&mut self, collection: &str, text: &str) -> (bool, Result<(), String>) {
        let path = collection_path(collection);
        let mut changed = self.load_if_changed(path.clone(), text.as_bytes().to_vec());
        let entry = &self.files[&path];
        if entry.refused {
            let errors: Vec<String> = entry
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .take(MAX_STATUS_DIAGNOSTICS)
                .map(Diagnostic::without_location)
                .collect();
            return (changed, Err(errors.join("\n")));
        }
        if let Some(waiting) = &mut self.xds_waiting {
            changed |= waiting.remove(collection);
        }
        (changed, Ok(()))
    }

    /// Reconciles `balancers` (the per-cluster load-balancing, breaker and pool state) with
    /// every snapshot before publishing it, so a data-plane worker never pays for the rebuild
    /// after a reload.
    pub fn reconcile(&mut self, balancers: Arc<crate::balancer::Balancers>) {
        self.balancers = Some(balancers);
    }

    /// The handle the data path loads snapshots from.
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The handle the admin API reads the store's state from.
    pub fn status(&self) -> Arc<ArcSwap<StoreStatus>> {
        self.status.clone()
    }

    /// The gate the data listeners check before carrying a connection.
    pub fn gate(&self) -> Arc<ConfigGate> {
        self.gate.clone()
    }

    /// Re-reads the directory; recompiles and publishes if anything changed. Returns true if a
    /// new snapshot was published.
    pub fn rescan(&mut self) -> bool {
        self.scan(None).0
    }

    /// One pass: files modified within `settle` are left for a later pass. Returns whether a
    /// snapshot was published and whether some file was left.
    fn scan(&mut self, settle: Option<Duration>) -> (bool, bool) {
        SCANS.fetch_add(1, Ordering::Relaxed);
        let listing = match self.folder {
            true => list_config_files(std::slice::from_ref(&self.dir)),
            false => list_config_files(&[]),
        };
        let hidden = listing.diagnostics();
        let mut changed = self.generation == 0 || hidden != self.hidden;
        for d in hidden.iter().filter(|d| !self.hidden.contains(d)) {
            tracing::error!("{d}; files under it keep their last good version");
        }
        self.hidden = hidden;
        // Removed files take their resources with them, unless they may only be hidden by a
        // directory that cannot be read.
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| {
                listing.files.binary_search(p).is_err()
                    && !listing.may_hide(p)
                    && !listing.unreadable.iter().any(|(u, _)| u == *p)
                    && !self.is_source_object(p)
            })
            .cloned()
            .collect();
        for path in removed {
            tracing::info!(file = %path.display(), "config file removed; its resources are withdrawn");
            self.files.remove(&path);
            changed = true;
        }
        let mut pending = false;
        for path in listing.files {
            if settle.is_some_and(|w| modified_within(&path, w)) {
                pending = true;
                continue;
            }
            match read_config_file(&path) {
                Ok(bytes) => changed |= self.load_if_changed(path, bytes),
                Err(message) => {
                    if self.files.get(&path).is_some_and(|f| {
                        f.content_hash.is_none()
                            && f.diagnostics.len() == 1
                            && f.diagnostics[0].message == message
                    }) {
                        continue;
                    }
                    changed = true;
                    self.unreadable_file(path, message);
                }
            }
        }
        if changed {
            self.publish();
            if let Some(hooks) = ALLOCATOR_HOOKS.get() {
                (hooks.after_publish)();
            }
        }
        (changed, pending)
    }

    fn unreadable_file(&mut self, path: PathBuf, message: String) {
        let diagnostic = Diagnostic {
            severity: Severity::Error,
            file: path.display().to_string(),
            line: 0,
            resource: None,
            field: String::new(),
            message,
        };
        let previous = self.files.remove(&path);
        let good = previous.map(|p| p.good).unwrap_or_default();
        tracing::error!(
            "{diagnostic}; {} resources from its last good version keep serving",
            good.len()
        );
        self.files.insert(
            path,
            FileEntry {
                content_hash: None,
                good,
                diagnostics: vec![diagnostic],
                refused: true,
                // Nothing can be known of a file that cannot be read.
                may_hold_policy: true,
            },
        );
    }

    /// Loads `bytes` as the file at `path` unless they are what it already holds; whether they
    /// were loaded.
    fn load_if_changed(&mut self, path: PathBuf, bytes: Vec<u8>) -> bool {
        let hash = content_hash(&bytes);
        if self
            .files
            .get(&path)
            .is_some_and(|f| f.content_hash == Some(hash))
        {
            return false;
        }
        self.load_file(path, hash, bytes);
        true
    }

    fn load_file(&mut self, path: PathBuf, hash: u64, bytes: Vec<u8>) {
        let emptied = bytes.iter().all(u8::is_ascii_whitespace);
        let text = String::from_utf8_lossy(&bytes);
        let loaded = sluice_api::decode_str(&path, &text);
        let mut diagnostics = loaded.diagnostics;
        for res in &loaded.resources {
            diagnostics.extend(sluice_api::validate(res));
        }
        let previous = self.files.remove(&path);
        let had_resources = previous.as_ref().is_some_and(|p| !p.good.is_empty());
        if emptied && had_resources {
            // Most often a file caught between truncation and the write that follows; an
            // operator who wants the resources gone deletes the file.
            diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                file: path.display().to_string(),
                line: 0,
                resource: None,
                field: String::new(),
                message: "file is empty; its last good version keeps serving (delete the file to withdraw its resources)".to_string(),
            });
        }
        let refused = diagnostics.iter().any(Diagnostic::is_error);
        for d in diagnostics.iter().take(MAX_STATUS_DIAGNOSTICS) {
            if d.is_error() {
                tracing::error!("{d}");
            } else {
                tracing::warn!("{d}");
            }
        }
        if diagnostics.len() > MAX_STATUS_DIAGNOSTICS {
            tracing::error!(
                file = %path.display(),
                "{} more problems in this file not logged",
                diagnostics.len() - MAX_STATUS_DIAGNOSTICS
            );
        }
        let keep_previous = refused || (emptied && had_resources);
        let good = if keep_previous {
            let kept = previous.map(|p| p.good).unwrap_or_default();
            if refused {
                tracing::error!(
                    file = %path.display(),
                    "config file refused; {} resources from its last good version keep serving",
                    kept.len()
                );
            }
            kept
        } else {
            tracing::info!(file = %path.display(), resources = loaded.resources.len(), "config file loaded");
            loaded.resources
        };
        self.files.insert(
            path,
            FileEntry {
                content_hash: Some(hash),
                good,
                diagnostics,
                refused,
                may_hold_policy: refused && may_hold_policy(&text),
            },
        );
    }

    /// Every served resource, in creation order, with duplicates across files dropped.
    fn resources(&mut self) -> (Vec<Resource>, Vec<Diagnostic>) {
        // Resources are shared (`Resource` clones are reference counts), so this costs a vector
        // and the lookups, not a copy of the config.
        let mut seen: HashMap<(Kind, &str, &str), &Path> = HashMap::new();
        let mut out = Vec::new();
        let mut diags = Vec::new();
        for (path, file) in &self.files {
            for res in &file.good {
                let key = (
                    res.kind,
                    res.meta.namespace.as_str(),
                    res.meta.name.as_str(),
                );
                if let Some(first) = seen.get(&key) {
                    diags.push(Diagnostic::at(
                        res,
                        Severity::Warning,
                        "metadata.name",
                        format!(
                            "{} {} is also defined in {}; that definition is used",
                            res.kind,
                            res.key(),
                            first.display()
                        ),
                    ));
                    continue;
                }
                seen.insert(key, path);
                let owned_key = || (res.kind, res.meta.namespace.clone(), res.meta.name.clone());
                let seen_order = match self.first_seen.get(&owned_key()) {
                    Some(order) => *order,
                    None => {
                        self.seen_counter += 1;
                        self.first_seen.insert(owned_key(), self.seen_counter);
                        self.seen_counter
                    }
                };
                out.push((seen_order, res.clone()));
            }
        }
        // The mesh config only gives way to another valid one.
        match out.iter().find(|(_, r)| is_mesh_config(r)) {
            Some((_, mesh)) => self.mesh_last_good = Some(mesh.clone()),
            None => {
                if let Some(mesh) = &self.mesh_last_good {
                    let still_there = self.files.contains_key(mesh.origin.file.as_ref());
                    if still_there {
                        diags.push(Diagnostic::at(
                            mesh,
                            Severity::Warning,
                            "data.mesh",
                            "the mesh config is no longer in this file; its last good version keeps serving (delete the file, or write the ConfigMap with an empty mesh, to return to the defaults)".to_string(),
                        ));
                        let seen_order = self
                            .first_seen
                            .get(&(
                                mesh.kind,
                                mesh.meta.namespace.clone(),
                                mesh.meta.name.clone(),
                            ))
                            .copied()
                            .unwrap_or(0);
                        out.push((seen_order, mesh.clone()));
                    } else {
                        tracing::info!("mesh config file removed; mesh defaults apply");
                        self.mesh_last_good = None;
                    }
                }
            }
        }
        out.sort_by(|(a_seen, a), (b_seen, b)| {
            sluice_model::snapshot::creation_order(a, b)
                .then_with(|| a_seen.cmp(b_seen))
                .then_with(|| a.meta.name.cmp(&b.meta.name))
                .then_with(|| a.meta.namespace.cmp(&b.meta.namespace))
        });
        (out.into_iter().map(|(_, r)| r).collect(), diags)
    }

    /// Why traffic must stay refused, while the proxy has not been ready yet.
    fn blocking_reasons(&self) -> Vec<String> {
        if self.gate.is_open() {
            return Vec::new();
        }
        if !self.sources_waiting.is_empty() {
            let names: Vec<&str> = self
                .sources_waiting
                .iter()
                .map(|p| p.trim_end_matches('/'))
                .collect();
            return vec![format!(
                "waiting for the first complete list of {}",
                names.join(", ")
            )];
        }
        if let Some(waiting) = self.xds_waiting.as_ref().filter(|w| !w.is_empty()) {
            let names: Vec<&str> = waiting.iter().map(String::as_str).collect();
            return vec![format!(
                "waiting for the control plane ({}) to send an acceptable {}",
                self.dir.display().to_string().trim_start_matches("xds://"),
                names.join(", ")
            )];
        }
        let files = self
            .files
            .iter()
            .filter(|(_, f)| f.refused && f.may_hold_policy && f.good.is_empty())
            .map(|(path, f)| {
                let first = f
                    .diagnostics
                    .iter()
                    .find(|d| d.is_error())
                    .map_or_else(String::new, |d| format!(" ({})", d.message));
                format!(
                    "{} was refused{first} and may hold mesh policy; traffic is refused until it is fixed",
                    path.display()
                )
            });
        let hidden = self.hidden.iter().filter(|d| d.is_error()).map(|d| {
            format!(
                "{d}; files under it may hold mesh policy, traffic is refused until it can be read"
            )
        });
        files.chain(hidden).collect()
    }

    fn publish(&mut self) {
        self.generation += 1;
        let (resources, mut diagnostics) = self.resources();
        if self.sink.is_some() {
            // A control plane serves nothing while a refused file may hold policy: proxies
            // would apply a config more open than the operator wrote.
            let not_ready = self.blocking_reasons();
            for reason in &not_ready {
                tracing::error!("not serving: {reason}");
            }
            if let (true, Some(sink)) = (not_ready.is_empty(), &mut self.sink) {
                sink(self.generation, &resources);
            }
            self.publish_status(diagnostics, not_ready);
            return;
        }
        let compiling = Instant::now();
        let snapshot = compile(&resources, &self.proxy, self.generation);
        // How long a push costs this proxy (bench/config.sh reads it).
        let compile_ms = (compiling.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        tracing::info!(
            generation = self.generation,
            resources = resources.len(),
            compile_ms,
            "config applied: {}",
            snapshot.summary()
        );
        for d in snapshot.diagnostics.iter().take(MAX_STATUS_DIAGNOSTICS) {
            tracing::warn!("{d}");
        }
        diagnostics.extend(snapshot.diagnostics.iter().cloned());
        let not_ready = self.blocking_reasons();
        let waiting = self.xds_waiting.as_ref().is_some_and(|w| !w.is_empty());
        for reason in &not_ready {
            if waiting {
                // A connection's first responses arrive one collection at a time.
                tracing::debug!("not ready: {reason}");
            } else {
                tracing::error!("not ready: {reason}");
            }
        }
        let snapshot = Arc::new(snapshot);
        if let Some(balancers) = &self.balancers {
            balancers.sync(&snapshot);
        }
        if let Some(hook) = &self.before_publish {
            hook(&snapshot);
        }
        self.snapshot.store(snapshot);
        self.publish_status(diagnostics, not_ready);
    }

    /// Stores the admin API's view and opens the gate once nothing blocks traffic.
    fn publish_status(&mut self, diagnostics: Vec<Diagnostic>, not_ready: Vec<String>) {
        let all: Vec<&Diagnostic> = self
            .hidden
            .iter()
            .chain(self.files.values().flat_map(|f| f.diagnostics.iter()))
            .chain(diagnostics.iter())
            .collect();
        let status = StoreStatus {
            config_dir: self.dir.display().to_string(),
            files: self
                .files
                .iter()
                .map(|(p, f)| FileStatus {
                    path: p.display().to_string(),
                    resources: f.good.len(),
                    refused: f.refused,
                })
                .collect(),
            diagnostics: all
                .iter()
                .take(MAX_STATUS_DIAGNOSTICS)
                .map(ToString::to_string)
                .collect(),
            diagnostics_omitted: all.len().saturating_sub(MAX_STATUS_DIAGNOSTICS),
            generation: self.generation,
            ready: not_ready.is_empty(),
            not_ready: not_ready.clone(),
        };
        self.status.store(Arc::new(status));
        if not_ready.is_empty() && !self.gate.is_open() {
            self.gate.set_open();
            tracing::info!("configuration accepted; traffic flows");
        }
    }

    /// Loads the directory on a thread of its own, then keeps watching it there until `stop`
    /// says so. Returns once the first load has been published, so the caller starts with a
    /// snapshot (or with the reasons the proxy is not ready).
    pub async fn spawn(
        self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        self.spawn_with_sources(stop, None).await
    }

    /// [`ConfigStore::spawn`], also applying what another source sends on `sources` (updates
    /// queued together are applied together and published once).
    pub async fn spawn_with_sources(
        mut self,
        stop: tokio::sync::watch::Receiver<bool>,
        sources: Option<std::sync::mpsc::Receiver<SourceUpdate>>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let handle = std::thread::Builder::new()
            .name("sluice-config".into())
            .stack_size(CONFIG_THREAD_STACK)
            .spawn(move || {
                if let Some(hooks) = ALLOCATOR_HOOKS.get() {
                    (hooks.thread_start)();
                }
                self.rescan();
                let _ = loaded_tx.send(());
                self.watch_blocking(stop, sources);
            })?;
        loaded_rx
            .await
            .map_err(|_| anyhow::anyhow!("the config thread stopped while loading"))?;
        Ok(handle)
    }

    /// Runs the store on a thread of its own, applying what the control-plane client sends on
    /// `updates` until `stop` says so or the client goes away. Updates queued together are
    /// applied together and published once (a connection's first responses arrive in a burst).
    pub fn spawn_xds(
        mut self,
        updates: std::sync::mpsc::Receiver<CollectionUpdate>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let handle = std::thread::Builder::new()
            .name("sluice-config".into())
            .stack_size(CONFIG_THREAD_STACK)
            .spawn(move || {
                if let Some(hooks) = ALLOCATOR_HOOKS.get() {
                    (hooks.thread_start)();
                }
                while !*stop.borrow() {
                    let first = match updates.recv_timeout(RESCAN_INTERVAL) {
                        Ok(update) => update,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    let mut changed = false;
                    let mut replies = Vec::new();
                    for update in std::iter::once(first).chain(updates.try_iter()) {
                        let (c, result) = self.load_collection(&update.collection, &update.text);
                        changed |= c;
                        replies.push((update.reply, result));
                    }
                    if changed {
                        self.publish();
                        if let Some(hooks) = ALLOCATOR_HOOKS.get() {
                            (hooks.after_publish)();
                        }
                    }
                    for (reply, result) in replies {
                        let _ = reply.send(result);
                    }
                }
            })?;
        Ok(handle)
    }

    /// Watches the directory until `stop` turns true, rescanning on file-system events and every
    /// [`RESCAN_INTERVAL`], and applies what `sources` sends as it comes.
    fn watch_blocking(
        mut self,
        stop: tokio::sync::watch::Receiver<bool>,
        sources: Option<std::sync::mpsc::Receiver<SourceUpdate>>,
    ) {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Wake>(1024);
        let files_tx = tx.clone();
        let event_target = WatchTarget::of(&self.dir);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Every scan reads the files, and inotify reports those reads (open, access, close):
            // taken as changes, each scan would set off the next, 20 times a second for good.
            if event.as_ref().is_ok_and(|e| !may_change_content(&e.kind)) {
                return;
            }
            // `--config FILE` watches the whole parent directory: its other files are not ours.
            if event.as_ref().is_ok_and(|e| !event_target.concerns(e)) {
                return;
            }
            // A full channel already has a rescan queued (or will wake soon enough).
            let _ = files_tx.try_send(Wake::Files);
        });
        let target = WatchTarget::of(&self.dir);
        let _watcher = match (self.folder, watcher) {
            (false, _) => None,
            (true, Ok(mut w)) => match w.watch(target.path(), target.mode()) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {}: {e}; polling every second",
                        target.path().display()
                    );
                    None
                }
            },
            (true, Err(e)) => {
                tracing::warn!("file watching unavailable: {e}; polling every second");
                None
            }
        };
        if let Some(sources) = sources {
            // The source's updates join the file events, so the loop waits on one channel.
            let tx = tx.clone();
            let _ = std::thread::Builder::new()
                .name("sluice-sources".into())
                .spawn(move || {
                    for update in sources {
                        if tx.send(Wake::Source(update)).is_err() {
                            return;
                        }
                    }
                });
        }
        drop(tx);
        let mut wait = RESCAN_INTERVAL;
        while !*stop.borrow() {
            let mut files_due = false;
            let mut sources_changed = false;
            let mut take = |store: &mut ConfigStore, wake: Wake| match wake {
                Wake::Files => files_due = true,
                Wake::Source(update) => sources_changed |= store.apply_source(update),
            };
            match rx.recv_timeout(wait) {
                Ok(Wake::Files) => {
                    // Editors write files in several steps; let them finish.
                    std::thread::sleep(Duration::from_millis(50));
                    take(&mut self, Wake::Files);
                }
                Ok(wake) => take(&mut self, wake),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => take(&mut self, Wake::Files),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wait);
                    take(&mut self, Wake::Files);
                }
            }
            while let Ok(wake) = rx.try_recv() {
                take(&mut self, wake);
            }
            if *stop.borrow() {
                return;
            }
            let mut published = false;
            if files_due && self.folder {
                let (changed, pending) = self.scan(Some(SETTLE));
                published = changed;
                wait = if pending { SETTLE } else { RESCAN_INTERVAL };
            }
            if sources_changed && !published {
                self.publish();
                if let Some(hooks) = ALLOCATOR_HOOKS.get() {
                    (hooks.after_publish)();
                }
            }
        }
    }
}

/// What the store watches for `--config PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WatchTarget {
    /// A directory, with everything below it.
    Dir(PathBuf),
    /// One file, through its parent directory: a watch on the file itself would follow the
    /// inode, and editors and `kubectl cp` that save by writing a new file and renaming it over
    /// the old one would leave the watch on a file nobody sees any more.
    File { parent: PathBuf, name: OsString },
}

impl WatchTarget {
    fn of(config: &Path) -> WatchTarget {
        match (config.is_dir(), config.file_name()) {
            (false, Some(name)) => {
                let parent = match config.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                WatchTarget::File {
                    parent,
                    name: name.to_os_string(),
                }
            }
            _ => WatchTarget::Dir(config.to_path_buf()),
        }
    }

    fn path(&self) -> &Path {
        match self {
            WatchTarget::Dir(dir) => dir,
            WatchTarget::File { parent, .. } => parent,
        }
    }

    fn mode(&self) -> notify::RecursiveMode {
        match self {
            WatchTarget::Dir(_) => notify::RecursiveMode::Recursive,
            WatchTarget::File { .. } => notify::RecursiveMode::NonRecursive,
        }
    }

    /// Whether `event` may be about the config: for one file, an event on that name, or on a
    /// Kubernetes ConfigMap volume's `..data` link that the file points through, or one that
    /// names no path (the kernel's queue overflowed: anything may have changed).
    fn concerns(&self, event: &notify::Event) -> bool {
        match self {
            WatchTarget::Dir(_) => true,
            WatchTarget::File { name, .. } => {
                event.paths.is_empty()
                    || event.paths.iter().any(|p| {
                        p.file_name().is_some_and(|n| {
                            n == name.as_os_str() || n.as_encoded_bytes().starts_with(b"..")
                        })
                    })
            }
        }
    }
}

/// What wakes the config thread: a file-system event, or an update from another source.
enum Wake {
    Files,
    Source(SourceUpdate),
}

/// Whether a file-system event may mean that config changed: anything but a read. A file closed
/// after writing counts (it is how some writers finish).
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// How many times any store in this process has read its directory (for tests and diagnostics).
pub fn scans_total() -> u64 {
    SCANS.load(Ordering::Relaxed)
}

static SCANS: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        assert!(!may_change_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!may_change_content(&EventKind::Access(AccessKind::Read)));
        assert!(may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(may_change_content(&EventKind::Create(CreateKind::File)));
        assert!(may_change_content(&EventKind::Any));
    }

    #[test]
    fn policy_kinds_are_recognised_in_broken_text() {
        assert!(may_hold_policy("kind: ConfigMap\nmetadata: {name: istio\n"));
        assert!(may_hold_policy("- kind: AuthorizationPolicy\n"));
        assert!(may_hold_policy("kind: RequestAuthentication\nspec: [\n"));
        assert!(may_hold_policy("{\"kind\": \"Sidecar\", \"x\": [}"));
        assert!(may_hold_policy("\u{0}\u{1}garbage: ["));
        assert!(!may_hold_policy(
            "kind: VirtualService\nspec: {hosts: [a}\n"
        ));
        assert!(!may_hold_policy("kind: ServiceEntry\n---\nkind: Gateway\n"));
    }
}
