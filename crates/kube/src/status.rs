//! Analysis results written to the Istio resources' `status.validationMessages`, as istiod
//! does with `PILOT_ENABLE_ANALYSIS` (istio/api `meta/v1alpha1/status.proto`: each message is
//! an `AnalysisMessageBase`: `type {name, code}`, `level`, `documentationUrl`), so
//! `kubectl get virtualservice -o yaml` shows what `sluice analyze` would say.
//!
//! Only objects read from the API are written (their store path is `kube:Kind/ns/name`), a
//! status only when it changes, and an object whose messages went away gets an empty list.
//! Writing a status changes the object's `resourceVersion` but not its config: the source
//! leaves `status` out, so it causes no push.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use sluice_api::Resource;
use sluice_model::analyze::{analyze, Level, Message};

/// How long the config must be quiet before it is analyzed again.
const QUIET: Duration = Duration::from_millis(500);
/// How soon status writes that failed for a passing reason are tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The status subresources written, as (API group, `plural/status`): what the RBAC must grant
/// `patch` on.
pub fn written_resources() -> Vec<(&'static str, String)> {
    crate::source::istio_kinds()
        .map(|(_, group, plural)| (group, format!("{plural}/status")))
        .collect()
}

/// Analyzes every config `configs` publishes and writes each API object's messages to its
/// status while `leading` says this replica leads (one writer per cluster, see
/// [`crate::leader`]), until `configs` closes.
pub async fn run(
    client: kube::Client,
    mut configs: tokio::sync::watch::Receiver<Arc<Vec<Resource>>>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    // path → the messages last written (what the object's status says now, as far as known).
    let mut written: HashMap<String, Value> = HashMap::new();
    // A write that failed for a passing reason (the API server busy or away, a conflict) is
    // tried again after RETRY, not only at the next config change.
    let mut retry = false;
    loop {
        tokio::select! {
            changed = configs.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if retry => {}
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
                // Another replica wrote meanwhile: what this one remembers writing is stale.
                written.clear();
            }
        }
        if !*leading.borrow_and_update() {
            retry = false;
            continue;
        }
        tokio::time::sleep(QUIET).await;
        let resources = configs.borrow_and_update().clone();
        let Ok(messages) = tokio::task::spawn_blocking(move || {
            let messages = analyze(&resources);
            desired(&resources, &messages)
        })
        .await
        else {
            continue;
        };
        retry = false;
        for (path, status) in &messages {
            if written.get(path) == Some(status) {
                continue;
            }
            // Nothing to say, and nothing said before: leave the object alone.
            if !written.contains_key(path) && status.as_array().is_some_and(Vec::is_empty) {
                continue;
            }
            match patch(&client, path, status).await {
                Ok(()) => {
                    written.insert(path.clone(), status.clone());
                }
                Err(e) => {
                    let passing = !matches!(&e, kube::Error::Api(s)
                        if (400..500).contains(&s.code) && s.code != 409 && s.code != 429);
                    retry |= passing;
                    tracing::warn!(object = %path, retrying = passing, "cannot write status: {e}");
                }
            }
        }
        written.retain(|path, _| messages.contains_key(path));
    }
}

/// Every API object's `validationMessages`, by store path (`kube:Kind/ns/name`).
fn desired(resources: &[Resource], messages: &[Message]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = resources
        .iter()
        .map(|r| r.origin.file.display().to_string())
        .filter(|path| writable(path).is_some())
        .map(|path| (path, json!([])))
        .collect();
    for m in messages {
        if let Some(Value::Array(list)) = out.get_mut(&m.file) {
            let mut entry = json!({
                "level": match m.level {
                    Level::Error => "ERROR",
                    Level::Warning => "WARNING",
                    Level::Info => "INFO",
                },
                "type": {"code": m.code, "name": m.name},
            });
            if let Some(url) = m.documentation_url() {
                entry["documentationUrl"] = json!(url);
            }
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
    }
    out
}

/// (kind, group, plural, namespace, name) of an API object's store path, for the Istio kinds
/// (whose status is written).
fn writable(path: &str) -> Option<(&'static str, &'static str, &'static str, &str, &str)> {
    let rest = path.strip_prefix("kube:")?;
    let (kind, rest) = rest.split_once('/')?;
    let (ns, name) = rest.split_once('/')?;
    let (kind, group, plural) = crate::source::istio_kinds().find(|(k, _, _)| *k == kind)?;
    Some((kind, group, plural, ns, name))
}

async fn patch(client: &kube::Client, path: &str, messages: &Value) -> Result<(), kube::Error> {
    let Some((kind, group, plural, ns, name)) = writable(path) else {
        return Ok(());
    };
    let resource = ApiResource {
        group: group.to_string(),
        version: "v1".to_string(),
        api_version: format!("{group}/v1"),
        kind: kind.to_string(),
        plural: plural.to_string(),
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    let body = json!({"status": {"validationMessages": messages}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}
