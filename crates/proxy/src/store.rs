//! The config store: watches `--config DIR`, keeps the last good version of every file, and
//! publishes a freshly compiled [`Snapshot`] whenever the set of valid resources changes.
//!
//! A file that fails to decode or validate is reported and its previous good resources keep
//! serving; a removed file removes its resources. Swapping the snapshot never blocks the data path:
//! requests hold the `Arc<Snapshot>` they started with.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_api::{Diagnostic, Kind, Resource};
use sluice_model::{compile, ProxyIdentity, Snapshot};

/// How often the directory is re-read even without file-system events (events can be missed on
/// some mounts, and a rescan of a small directory is cheap).
const RESCAN_INTERVAL: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
struct FileEntry {
    content_hash: u64,
    /// The resources of the last version of this file that decoded and validated cleanly.
    good: Vec<Resource>,
    /// Problems of the current version on disk.
    diagnostics: Vec<Diagnostic>,
    /// True when the current version on disk was refused (and `good` is an older version).
    refused: bool,
}

/// What the admin API shows about the configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStatus {
    pub config_dir: String,
    /// Files read, with the number of resources served from each and whether the version on disk
    /// was refused.
    pub files: Vec<FileStatus>,
    /// Errors and warnings of the files as they are on disk now, and of the compiled snapshot.
    pub diagnostics: Vec<String>,
    pub generation: u64,
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
    /// First time each resource was seen, standing in for `creationTimestamp` when absent.
    first_seen: HashMap<(Kind, String, String), u64>,
    seen_counter: u64,
    generation: u64,
    snapshot: Arc<ArcSwap<Snapshot>>,
    status: Arc<ArcSwap<StoreStatus>>,
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            list_files(&path, out);
        } else if is_config_file(&path) {
            out.push(path);
        }
    }
}

impl ConfigStore {
    /// A store for `dir`, compiling for `proxy`. Call [`ConfigStore::rescan`] to load.
    pub fn new(dir: PathBuf, proxy: ProxyIdentity) -> ConfigStore {
        ConfigStore {
            status: Arc::new(ArcSwap::from_pointee(StoreStatus {
                config_dir: dir.display().to_string(),
                ..StoreStatus::default()
            })),
            dir,
            proxy,
            files: BTreeMap::new(),
            first_seen: HashMap::new(),
            seen_counter: 0,
            generation: 0,
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
        }
    }

    /// The handle the data path loads snapshots from.
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The handle the admin API reads the store's state from.
    pub fn status(&self) -> Arc<ArcSwap<StoreStatus>> {
        self.status.clone()
    }

    /// Re-reads the directory; recompiles and publishes if anything changed. Returns true if a
    /// new snapshot was published.
    pub fn rescan(&mut self) -> bool {
        let mut paths = Vec::new();
        list_files(&self.dir, &mut paths);
        paths.sort();
        let mut changed = self.generation == 0;
        // Removed files take their resources with them.
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| paths.binary_search(p).is_err())
            .cloned()
            .collect();
        for path in removed {
            tracing::info!(file = %path.display(), "config file removed; its resources are withdrawn");
            self.files.remove(&path);
            changed = true;
        }
        for path in paths {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    // Vanished between listing and reading, or unreadable: try again next scan.
                    tracing::debug!(file = %path.display(), "cannot read config file: {e}");
                    continue;
                }
            };
            let hash = content_hash(&bytes);
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.content_hash == hash)
            {
                continue;
            }
            changed = true;
            let text = String::from_utf8_lossy(&bytes);
            self.load_file(path, hash, &text);
        }
        if changed {
            self.publish();
        }
        changed
    }

    fn load_file(&mut self, path: PathBuf, hash: u64, text: &str) {
        let loaded = sluice_api::decode_str(&path, text);
        let mut diagnostics = loaded.diagnostics;
        for res in &loaded.resources {
            diagnostics.extend(sluice_api::validate(res));
        }
        let refused = diagnostics.iter().any(Diagnostic::is_error);
        for d in &diagnostics {
            if d.is_error() {
                tracing::error!("{d}");
            } else {
                tracing::warn!("{d}");
            }
        }
        let previous = self.files.remove(&path);
        let good = if refused {
            let kept = previous.map(|p| p.good).unwrap_or_default();
            tracing::error!(
                file = %path.display(),
                "config file refused; {} resources from its last good version keep serving",
                kept.len()
            );
            kept
        } else {
            tracing::info!(file = %path.display(), resources = loaded.resources.len(), "config file loaded");
            loaded.resources
        };
        self.files.insert(
            path,
            FileEntry {
                content_hash: hash,
                good,
                diagnostics,
                refused,
            },
        );
    }

    /// Every served resource, in creation order, with duplicates across files dropped.
    fn resources(&mut self) -> (Vec<Resource>, Vec<Diagnostic>) {
        let mut seen: HashMap<(Kind, String, String), String> = HashMap::new();
        let mut out = Vec::new();
        let mut diags = Vec::new();
        for (path, file) in &self.files {
            for res in &file.good {
                let key = (res.kind, res.meta.namespace.clone(), res.meta.name.clone());
                if let Some(first) = seen.get(&key) {
                    diags.push(Diagnostic::at(
                        res,
                        sluice_api::Severity::Warning,
                        "metadata.name",
                        format!(
                            "{} {} is also defined in {first}; that definition is used",
                            res.kind,
                            res.key()
                        ),
                    ));
                    continue;
                }
                seen.insert(key.clone(), path.display().to_string());
                if !self.first_seen.contains_key(&key) {
                    self.seen_counter += 1;
                    self.first_seen.insert(key, self.seen_counter);
                }
                out.push(res.clone());
            }
        }
        let first_seen = &self.first_seen;
        let order = |r: &Resource| {
            first_seen
                .get(&(r.kind, r.meta.namespace.clone(), r.meta.name.clone()))
                .copied()
        };
        out.sort_by(|a, b| {
            sluice_model::snapshot::creation_order(a, b)
                .then_with(|| order(a).cmp(&order(b)))
                .then_with(|| a.meta.name.cmp(&b.meta.name))
                .then_with(|| a.meta.namespace.cmp(&b.meta.namespace))
        });
        (out, diags)
    }

    fn publish(&mut self) {
        self.generation += 1;
        let (resources, mut diagnostics) = self.resources();
        let snapshot = compile(&resources, &self.proxy, self.generation);
        tracing::info!(
            generation = self.generation,
            "config applied: {}",
            snapshot.summary()
        );
        for d in &snapshot.diagnostics {
            tracing::warn!("{d}");
        }
        diagnostics.extend(snapshot.diagnostics.iter().cloned());
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
            diagnostics: self
                .files
                .values()
                .flat_map(|f| f.diagnostics.iter())
                .chain(diagnostics.iter())
                .map(ToString::to_string)
                .collect(),
            generation: self.generation,
        };
        self.snapshot.store(Arc::new(snapshot));
        self.status.store(Arc::new(status));
    }

    /// Watches the directory until `shutdown` resolves, rescanning on file-system events and every
    /// [`RESCAN_INTERVAL`].
    pub async fn watch(mut self, shutdown: impl std::future::Future<Output = ()>) {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            // A full channel already has a rescan queued.
            let _ = tx.try_send(());
        });
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&self.dir, notify::RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {}: {e}; polling every second",
                        self.dir.display()
                    );
                    None
                }
            },
            Err(e) => {
                tracing::warn!("file watching unavailable: {e}; polling every second");
                None
            }
        };
        let mut tick = tokio::time::interval(RESCAN_INTERVAL);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {
                    // Editors write files in several steps; let them finish.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            self.rescan();
        }
    }
}
