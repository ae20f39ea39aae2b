//! The mesh root published in every namespace as ConfigMap `istio-ca-root-cert` (key
//! `root-cert.pem`), as istiod's namespace controller does (`pilot/pkg/serviceregistry/kube/
//! controller/namespacecontroller.go`): injected sidecars mount it to check the control plane's
//! certificate before they ask it for their own.
//!
//! A new namespace gets the ConfigMap; one that is deleted or edited is put back. Only the
//! replica that leads writes ([`crate::leader`]); Kubernetes' own namespaces are left alone.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

/// The ConfigMap's name and key, Istio's.
pub const CONFIGMAP: &str = "istio-ca-root-cert";
pub const KEY: &str = "root-cert.pem";

/// Namespaces istiod does not publish to: those it never injects into.
const IGNORED: [&str; 4] = crate::inject::pod::IGNORED_NAMESPACES;

/// How soon a failed publication is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the watches saw.
enum Seen {
    Namespaces(Vec<String>),
    Namespace(String),
    NamespaceGone(String),
    /// A ConfigMap of ours changed or went away in this namespace.
    ConfigMap(String),
}

/// Keeps `root_pem` published in every namespace while `leading` says this replica leads,
/// until `leading`'s sender is gone.
pub async fn run(client: kube::Client, root_pem: String, mut leading: watch::Receiver<bool>) {
    let (tx, mut seen) = tokio::sync::mpsc::channel::<Seen>(256);
    tokio::spawn(watch_namespaces(client.clone(), tx.clone()));
    tokio::spawn(watch_configmaps(client.clone(), tx));
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    // Namespaces whose last attempt failed (the API server busy or away), tried again on a tick
    // rather than waiting for an event that may never come.
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut retry = tokio::time::interval(RETRY);
    loop {
        let todo: Vec<String> = tokio::select! {
            _ = retry.tick() => std::mem::take(&mut failed)
                .into_iter()
                .filter(|ns| namespaces.contains(ns))
                .collect(),
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
                // Newly leading: every namespace, as another replica may have left gaps.
                namespaces.iter().cloned().collect()
            }
            item = seen.recv() => match item {
                None => return,
                Some(Seen::Namespaces(all)) => {
                    namespaces = all.into_iter().filter(|n| !IGNORED.contains(&n.as_str())).collect();
                    namespaces.iter().cloned().collect()
                }
                Some(Seen::Namespace(ns)) if !IGNORED.contains(&ns.as_str()) => {
                    namespaces.insert(ns.clone());
                    vec![ns]
                }
                Some(Seen::NamespaceGone(ns)) => {
                    namespaces.remove(&ns);
                    Vec::new()
                }
                Some(Seen::ConfigMap(ns)) if namespaces.contains(&ns) => vec![ns],
                Some(_) => Vec::new(),
            },
        };
        if !*leading.borrow_and_update() {
            continue;
        }
        for ns in todo {
            if let Err(e) = publish(&client, &ns, &root_pem).await {
                tracing::warn!(namespace = %ns, "cannot publish {CONFIGMAP} (retrying in {RETRY:?}): {e}");
                failed.insert(ns);
            }
        }
    }
}

/// Creates or corrects the ConfigMap in `namespace`.
async fn publish(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let data = std::collections::BTreeMap::from([(KEY.to_string(), root_pem.to_string())]);
    match api.get_opt(CONFIGMAP).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.to_string()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(std::collections::BTreeMap::from([(
                        "istio.io/config".to_string(),
                        "true".to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    tracing::info!(namespace, "published {CONFIGMAP}");
                    Ok(())
                }
                // Created meanwhile (another replica, or a watch event racing this one).
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(mut cm) if cm.data.as_ref() != Some(&data) => {
            cm.data = Some(data);
            // The replace carries the resourceVersion read: a concurrent edit makes it fail,
            // and the watch brings the ConfigMap back here.
            api.replace(CONFIGMAP, &PostParams::default(), &cm).await?;
            tracing::info!(namespace, "corrected {CONFIGMAP}");
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

async fn watch_namespaces(client: kube::Client, seen: tokio::sync::mpsc::Sender<Seen>) {
    let api: Api<Namespace> = Api::all(client);
    let mut buffer = Vec::new();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let item = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(ns)) => {
                buffer.extend(ns.metadata.name);
                continue;
            }
            Ok(Event::InitDone) => Seen::Namespaces(std::mem::take(&mut buffer)),
            Ok(Event::Apply(ns)) => match ns.metadata.name {
                // A namespace being deleted takes its ConfigMaps with it.
                Some(name) if ns.metadata.deletion_timestamp.is_none() => Seen::Namespace(name),
                Some(name) => Seen::NamespaceGone(name),
                None => continue,
            },
            Ok(Event::Delete(ns)) => match ns.metadata.name {
                Some(name) => Seen::NamespaceGone(name),
                None => continue,
            },
            Err(e) => {
                tracing::warn!("watching namespaces: {e}");
                continue;
            }
        };
        if seen.send(item).await.is_err() {
            return;
        }
    }
}

async fn watch_configmaps(client: kube::Client, seen: tokio::sync::mpsc::Sender<Seen>) {
    let api: Api<ConfigMap> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let namespace = match event {
            Ok(Event::Apply(cm) | Event::Delete(cm)) => cm.metadata.namespace,
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("watching {CONFIGMAP} ConfigMaps: {e}");
                None
            }
        };
        if let Some(ns) = namespace {
            if seen.send(Seen::ConfigMap(ns)).await.is_err() {
                return;
            }
        }
    }
}
