//! The admission webhooks `sluice control` serves (as istiod serves `/inject` and `/validate`):
//! pure functions from an AdmissionReview (`admission.k8s.io/v1`, or `v1beta1`, answered in the
//! version asked) to the AdmissionReview that answers it.
//!
//! - [`mutate`]: sidecar injection into a Pod being created — the same injection as
//!   `sluice inject` ([`crate::inject::pod::inject`]), returned as a JSONPatch. The webhook
//!   configuration's `namespaceSelector` (`istio-injection=enabled`) decides which namespaces'
//!   pods are sent; the pod's own `sidecar.istio.io/inject` label or annotation is honoured here.
//! - [`validate`]: refuses an Istio object that `sluice validate` refuses, with the same
//!   message (`Kind ns/name: field: message`, without the file and line a file would have);
//!   warnings go back as the API server's warnings.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sluice_api::diagnostics::{summarize, MAX_ALIKE};
use sluice_api::Diagnostic;

use crate::inject::{pod, InjectOptions, PodOutcome, WorkloadName};

/// A body that is not an AdmissionReview with a request: nothing can be answered in the
/// review's own terms (there is no `uid` to answer), so the server answers 400 with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an AdmissionReview request: {0}")]
pub struct ReviewError(pub String);

/// The parts of an AdmissionRequest the webhooks read.
struct Request<'a> {
    api_version: &'a str,
    uid: &'a str,
    kind: &'a str,
    operation: &'a str,
    namespace: &'a str,
    object: Option<&'a Value>,
}

fn request(review: &Value) -> Result<Request<'_>, ReviewError> {
    let fail = |m: &str| ReviewError(m.to_string());
    let Value::Object(review) = review else {
        return Err(fail("the body is not a JSON object"));
    };
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(
        api_version,
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return Err(ReviewError(format!(
            "apiVersion {api_version:?} is not admission.k8s.io/v1 (or v1beta1)"
        )));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(fail("kind is not AdmissionReview"));
    }
    let Some(Value::Object(req)) = review.get("request") else {
        return Err(fail("it has no request"));
    };
    let Some(uid) = req.get("uid").and_then(Value::as_str) else {
        return Err(fail("request.uid is missing"));
    };
    let text = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("");
    Ok(Request {
        api_version,
        uid,
        kind: req
            .get("kind")
            .and_then(|k| k.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or(""),
        operation: text("operation"),
        namespace: text("namespace"),
        object: req.get("object").filter(|o| !o.is_null()),
    })
}

/// The AdmissionReview answering `req` with `response` (its `uid` filled in).
fn review(req: &Request<'_>, mut response: Map<String, Value>) -> Value {
    response.shift_insert(0, "uid".to_string(), json!(req.uid));
    json!({
        "apiVersion": req.api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}

fn allowed() -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("allowed".to_string(), json!(true));
    r
}

fn denied(message: String) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("allowed".to_string(), json!(false));
    r.insert(
        "status".to_string(),
        json!({"status": "Failure", "code": 400, "reason": "BadRequest", "message": message}),
    );
    r
}

fn with_warnings(mut r: Map<String, Value>, warnings: Vec<String>) -> Map<String, Value> {
    if !warnings.is_empty() {
        r.insert("warnings".to_string(), json!(warnings));
    }
    r
}

/// `/inject`: the JSONPatch that injects the sidecar into the Pod of a CREATE, as `sluice
/// inject` would. Pods that are not to be injected are allowed unchanged; a pod whose injection
/// annotations are invalid is refused with the reason, as Istio's injector refuses it.
pub fn mutate(review_json: &Value, opts: &InjectOptions) -> Result<Value, ReviewError> {
    let req = request(review_json)?;
    if req.kind != "Pod" || req.operation != "CREATE" {
        return Ok(review(&req, allowed()));
    }
    let Some(Value::Object(original)) = req.object else {
        return Ok(review(
            &req,
            denied("the request carries no Pod object".to_string()),
        ));
    };
    let mut pod_obj = original.clone();
    let workload = workload_of(&pod_obj, req.namespace);
    let mut problems = Vec::new();
    let outcome = pod::inject(&mut pod_obj, &workload, opts, &mut problems);
    let warnings: Vec<String> = problems.iter().map(problem_text).collect();
    let response = match outcome {
        Err(problem) => denied(problem_text(&problem)),
        Ok(PodOutcome::Skipped(why)) => {
            tracing::debug!(pod = %pod_name(&pod_obj), "not injected: {why}");
            allowed()
        }
        Ok(PodOutcome::Injected) => {
            let patch = json_patch::diff(&Value::Object(original.clone()), &Value::Object(pod_obj));
            let mut r = allowed();
            if !patch.0.is_empty() {
                let bytes = serde_json::to_vec(&patch)
                    .map_err(|e| ReviewError(format!("cannot encode the patch: {e}")))?;
                r.insert("patchType".to_string(), json!("JSONPatch"));
                r.insert(
                    "patch".to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
            r
        }
    };
    Ok(review(&req, with_warnings(response, warnings)))
}

fn problem_text(p: &pod::PodProblem) -> String {
    if p.field.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.field, p.message)
    }
}

fn pod_name(pod: &Map<String, Value>) -> String {
    let meta = pod.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = match get("name") {
        "" => get("generateName"),
        name => name,
    };
    format!("{}/{name}", get("namespace"))
}

/// The workload a Pod belongs to, from its controller (Istio's `GetDeployMetaFromPod`): the
/// Deployment of a ReplicaSet's pod, the CronJob of a Job's, else the controller, else the pod.
fn workload_of(pod: &Map<String, Value>, request_namespace: &str) -> WorkloadName {
    let meta = pod.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let namespace = match get("namespace") {
        "" => request_namespace.to_string(),
        ns => ns.to_string(),
    };
    let mut name = get("name").to_string();
    let controller = meta
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller") == Some(&Value::Bool(true)))
        });
    if !get("generateName").is_empty() {
        if let Some(owner) = controller {
            let kind = owner.get("kind").and_then(Value::as_str).unwrap_or("");
            let owner_name = owner.get("name").and_then(Value::as_str).unwrap_or("");
            name = owner_name.to_string();
            let hash = meta
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get("pod-template-hash"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind == "ReplicaSet" && !hash.is_empty() {
                if let Some(deployment) = owner_name.strip_suffix(&format!("-{hash}")) {
                    name = deployment.to_string();
                }
            } else if kind == "Job" {
                // A CronJob's Jobs are named `<cronjob>-<8 to 10 digits>`.
                if let Some((cron, stamp)) = owner_name.rsplit_once('-') {
                    if (8..=10).contains(&stamp.len()) && stamp.bytes().all(|b| b.is_ascii_digit())
                    {
                        name = cron.to_string();
                    }
                }
            }
        }
    }
    WorkloadName { name, namespace }
}

/// `/validate`: refuses an object that `sluice validate` refuses, with its messages (one line
/// each); allows the rest, with `sluice validate`'s warnings. Kinds sluice does not read (other
/// Istio APIs, anything else sent) are allowed without comment, and so are deletions.
pub fn validate(review_json: &Value) -> Result<Value, ReviewError> {
    let req = request(review_json)?;
    let Some(object) = req.object.filter(|_| req.operation != "DELETE") else {
        return Ok(review(&req, allowed()));
    };
    let mut object = object.clone();
    // The API server sends namespaced objects with their namespace; be sure of it anyway, so
    // the message names the object as `sluice validate` would.
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let missing = meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing && !req.namespace.is_empty() {
            meta.insert("namespace".to_string(), json!(req.namespace));
        }
    }
    let diags = check(&object);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(Diagnostic::without_location)
        .collect();
    let warnings: Vec<String> = diags
        .iter()
        .filter(|d| !d.is_error())
        .map(Diagnostic::without_location)
        .collect();
    let response = if errors.is_empty() {
        allowed()
    } else {
        denied(errors.join("\n"))
    };
    Ok(review(&req, with_warnings(response, warnings)))
}

/// What `sluice validate` reports for one object: decoding, then the resource's own checks;
/// nothing for a kind sluice does not read.
fn check(object: &Value) -> Vec<Diagnostic> {
    let text = object.to_string();
    let loaded = sluice_api::decode_str(Path::new("admission"), &text);
    if loaded.resources.is_empty() && !loaded.has_errors() {
        return Vec::new();
    }
    let mut out = loaded.diagnostics;
    for res in &loaded.resources {
        out.extend(sluice_api::validate(res));
    }
    out.sort_by_key(|d| d.line);
    summarize(out, MAX_ALIKE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(operation: &str, object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": null,
                "dryRun": false,
            }
        })
    }

    #[test]
    fn workload_names_follow_the_controller() {
        let pod = json!({"metadata": {
            "generateName": "reviews-v1-5d8f7c9b4-",
            "labels": {"pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "reviews-v1-5d8f7c9b4", "controller": true}],
        }});
        let w = workload_of(pod.as_object().unwrap(), "shop");
        assert_eq!(
            (w.name.as_str(), w.namespace.as_str()),
            ("reviews-v1", "shop")
        );
        let pod = json!({"metadata": {
            "generateName": "backup-28345670-",
            "ownerReferences": [{"kind": "Job", "name": "backup-28345670", "controller": true}],
        }});
        assert_eq!(workload_of(pod.as_object().unwrap(), "").name, "backup");
        let pod = json!({"metadata": {"name": "solo", "namespace": "x"}});
        let w = workload_of(pod.as_object().unwrap(), "shop");
        assert_eq!((w.name.as_str(), w.namespace.as_str()), ("solo", "x"));
    }

    #[test]
    fn only_pod_creations_are_mutated() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "app"}]}});
        let opts = InjectOptions::default();
        for op in ["UPDATE", "DELETE", "CONNECT"] {
            let r = mutate(&admission(op, pod.clone()), &opts).unwrap();
            assert_eq!(r["response"]["allowed"], true);
            assert!(r["response"].get("patch").is_none(), "{op}");
        }
        let r = mutate(&admission("CREATE", pod), &opts).unwrap();
        assert_eq!(r["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
    }

    #[test]
    fn not_a_review() {
        for body in [
            json!([]),
            json!({"kind": "AdmissionReview"}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}),
            json!({"apiVersion": "v1", "kind": "Pod"}),
        ] {
            assert!(mutate(&body, &InjectOptions::default()).is_err(), "{body}");
            assert!(validate(&body).is_err(), "{body}");
        }
    }
}
