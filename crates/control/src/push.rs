//! From the config store's publishes to what the ADS server serves: each collection encoded
//! once per change, versioned by the generation it last changed at, and pushes debounced as
//! istiod debounces them (`PILOT_DEBOUNCE_AFTER` 100 ms of quiet, `PILOT_DEBOUNCE_MAX` 10 s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_api::Resource;
use sluice_xds::server::{Published, PublishedCollection};
use tokio::sync::watch;

use crate::encode::{audience, mcp_object};

/// Encodes publishes; remembers each collection's last content so an unchanged collection
/// keeps its version (and is not pushed again).
#[derive(Default)]
pub struct Encoder {
    last: BTreeMap<String, PublishedCollection>,
}

impl Encoder {
    /// Every collection a proxy subscribes to, with `resources` encoded. A collection with a
    /// resource that cannot be encoded keeps its last version whole (never a collection with a
    /// policy missing), and the error is logged with the resource's name.
    pub fn encode(&mut self, generation: u64, resources: &[Resource]) -> Published {
        let mut grouped: BTreeMap<String, Grouped> = sluice_proxy::xds_source::collections()
            .into_iter()
            .map(|c| (c, Grouped::default()))
            .collect();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        // Where each resource a Sidecar may scope went: (index, collection, position).
        let mut placed = Vec::new();
        for (index, res) in resources.iter().enumerate() {
            let Some((collection, object)) = mcp_object(res) else {
                continue;
            };
            match sluice_xds::encode_resource(&collection, &object) {
                Ok(any) => {
                    let group = grouped.entry(collection.clone()).or_default();
                    if crate::sidecars::scoped_kind(res.kind) {
                        placed.push((index, collection, group.anys.len()));
                    }
                    group.anys.push(any);
                    group.audiences.push(audience(res));
                    // Delta xDS names resources; the bare MeshConfig is unnamed.
                    group.names.push(if object.name.is_empty() {
                        res.kind.to_string()
                    } else {
                        object.name
                    });
                }
                Err(e) => {
                    tracing::error!(
                        "{} {}: cannot be sent to proxies: {e}; {collection} keeps its last version",
                        res.kind,
                        res.key()
                    );
                    failed.entry(collection).or_insert_with(|| e.to_string());
                }
            }
        }
        let mut collections = BTreeMap::new();
        for (collection, group) in grouped {
            let Grouped {
                anys,
                audiences,
                names,
            } = group;
            let previous = self.last.get(&collection);
            let unchanged = previous.is_some_and(|p| {
                p.resources.as_ref() == &anys
                    && p.audiences.as_ref() == &audiences
                    && p.names.as_ref() == &names
            });
            let entry = if failed.contains_key(&collection) || unchanged {
                // Never sent before and cannot be sent now: proxies get nothing for it (and
                // stay not ready), not an empty collection that would open what it guards.
                let Some(previous) = previous else { continue };
                previous.clone()
            } else {
                PublishedCollection {
                    version: generation.to_string(),
                    digests: Arc::new(anys.iter().map(sluice_xds::server::digest).collect()),
                    audiences: Arc::new(audiences),
                    names: Arc::new(names),
                    resources: Arc::new(anys),
                    ..PublishedCollection::default()
                }
            };
            self.last.insert(collection.clone(), entry.clone());
            collections.insert(collection, entry);
        }
        // A collection that kept its last version holds other resources than `resources`:
        // Sidecars do not scope it (its proxies get all of it, never less than they need).
        placed.retain(|(_, collection, _)| !failed.contains_key(collection));
        let sidecars = crate::sidecars::SidecarSelection::new(resources, placed)
            .map(|s| Arc::new(s) as Arc<dyn sluice_xds::server::SelectSidecar>);
        Published {
            collections,
            at: Some(Instant::now()),
            sidecars,
        }
    }
}

/// One collection's resources while a publish is encoded, index for index.
#[derive(Default)]
struct Grouped {
    anys: Vec<sluice_xds::Any>,
    audiences: Vec<sluice_xds::server::Audience>,
    names: Vec<String>,
}

/// How long to wait for quiet before pushing, and the longest a push may be held back.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    pub after: Duration,
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            after: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Forwards `candidates` to `served` once they have been quiet for `debounce.after` (or
/// changing for `debounce.max`). A push carries the time its first change was seen, so
/// convergence times include the debounce.
pub async fn debounce(
    mut candidates: watch::Receiver<Option<Arc<Published>>>,
    served: watch::Sender<Arc<Published>>,
    debounce: Debounce,
) {
    loop {
        if candidates.changed().await.is_err() {
            return;
        }
        let first = Instant::now();
        let changed_at = candidates
            .borrow()
            .as_ref()
            .and_then(|p| p.at)
            .unwrap_or(first);
        loop {
            let quiet = tokio::time::sleep(debounce.after);
            tokio::select! {
                changed = candidates.changed() => {
                    if changed.is_err() || first.elapsed() >= debounce.max {
                        break;
                    }
                }
                () = quiet => break,
            }
        }
        let latest = candidates.borrow_and_update().clone();
        if let Some(latest) = latest {
            let mut published = latest.as_ref().clone();
            published.at = Some(changed_at);
            served.send_replace(Arc::new(published));
        }
    }
}
