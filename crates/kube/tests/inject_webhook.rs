//! The admission webhooks' decisions on real AdmissionReview v1 payloads (the shape the API
//! server posts: defaulted fields, owner references, managed fields): the injection patch,
//! applied with an RFC 6902 implementation, gives the pod `sluice inject` gives; validation
//! refuses with `sluice validate`'s message.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use sluice_kube::inject::{self, yaml, InjectOptions};
use sluice_kube::webhook;

/// A Pod as the API server sends it for a Deployment `reviews-v1`'s ReplicaSet.
fn pod(labels: Value, annotations: Value) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "reviews-v1-7d8f9c6b5-",
            "namespace": "bookinfo",
            "creationTimestamp": null,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d8f9c6b5",
                "uid": "1c4a2d4e-0c1b-4d41-9d35-6b7a2a0f1e11", "controller": true,
                "blockOwnerDeletion": true
            }],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [{
                "name": "reviews",
                "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "resources": {},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "bookinfo-reviews",
            "serviceAccount": "bookinfo-reviews",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

fn review(kind: (&str, &str, &str), resource: &str, operation: &str, object: Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "3f0c8d62-7b44-4c1e-9d2a-52a1f0c9e8b7",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": "bookinfo",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn pod_review(object: Value) -> Value {
    review(("", "v1", "Pod"), "pods", "CREATE", object)
}

fn patch_of(response: &Value) -> json_patch::Patch {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch is base64 text"))
        .expect("base64");
    serde_json::from_slice(&bytes).expect("a JSON Patch")
}

#[test]
fn the_injection_patch_gives_the_pod_sluice_inject_gives() {
    let original = pod(
        json!({"app": "reviews", "version": "v1", "pod-template-hash": "7d8f9c6b5"}),
        json!({}),
    );
    let answer = webhook::mutate(&pod_review(original.clone()), &InjectOptions::default()).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "3f0c8d62-7b44-4c1e-9d2a-52a1f0c9e8b7");
    assert_eq!(response["allowed"], true);
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch_of(response)).expect("the patch applies");

    // The same injection `sluice inject` makes of the same pod.
    let text = yaml::to_yaml(&original);
    let out = inject::inject_manifest("pod.yaml", &text, &InjectOptions::default()).unwrap();
    let mut expected = yaml::parse_documents(&out.text, 0).unwrap()[0]
        .value
        .clone();
    // The workload's name comes from the ReplicaSet's Deployment here; kube-inject has only the
    // (generated) pod name.
    expected["metadata"]["labels"]["service.istio.io/canonical-name"] = json!("reviews");
    assert_eq!(
        patched["metadata"]["labels"],
        expected["metadata"]["labels"]
    );
    assert_eq!(
        patched["spec"]["initContainers"],
        expected["spec"]["initContainers"]
    );
    assert_eq!(
        patched["metadata"]["annotations"],
        expected["metadata"]["annotations"]
    );

    let names: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reviews", "istio-proxy"]);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "istio-init");
    assert_eq!(
        patched["metadata"]["labels"]["service.istio.io/canonical-name"],
        "reviews"
    );
    assert_eq!(
        patched["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "v1"
    );
    // What the API server filled in is untouched.
    assert_eq!(
        patched["metadata"]["managedFields"],
        original["metadata"]["managedFields"]
    );
    assert_eq!(patched["spec"]["volumes"], original["spec"]["volumes"]);
}

#[test]
fn pods_not_to_inject_are_allowed_unchanged() {
    for (labels, annotations) in [
        (
            json!({"app": "reviews", "sidecar.istio.io/inject": "false"}),
            json!({}),
        ),
        (
            json!({"app": "reviews"}),
            json!({"sidecar.istio.io/inject": "false"}),
        ),
    ] {
        let answer = webhook::mutate(
            &pod_review(pod(labels, annotations)),
            &InjectOptions::default(),
        )
        .unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
    }
    let mut host = pod(json!({"app": "reviews"}), json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    let answer = webhook::mutate(&pod_review(host), &InjectOptions::default()).unwrap();
    assert!(answer["response"].get("patch").is_none());
    // Already injected (by `sluice inject` or an earlier pass): nothing to change.
    let original = pod(json!({"app": "reviews"}), json!({}));
    let mut injected = original.clone();
    let answer = webhook::mutate(&pod_review(original), &InjectOptions::default()).unwrap();
    json_patch::patch(&mut injected, &patch_of(&answer["response"])).unwrap();
    let again = webhook::mutate(&pod_review(injected), &InjectOptions::default()).unwrap();
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
}

#[test]
fn invalid_injection_annotations_refuse_the_pod() {
    let bad = pod(
        json!({"app": "reviews"}),
        json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/40"}),
    );
    let answer = webhook::mutate(&pod_review(bad), &InjectOptions::default()).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(
        response["status"]["message"],
        "metadata.annotations.traffic.sidecar.istio.io/includeOutboundIPRanges: invalid value \
         \"10.0.0.0/40\" for annotation traffic.sidecar.istio.io/includeOutboundIPRanges: \
         \"10.0.0.0/40\" is not a CIDR such as 10.0.0.0/8"
    );
}

#[test]
fn warnings_travel_with_the_answer() {
    let p = pod(
        json!({"app": "reviews"}),
        json!({"proxy.istio.io/config": "tracing: {}"}),
    );
    let answer = webhook::mutate(&pod_review(p), &InjectOptions::default()).unwrap();
    assert_eq!(
        answer["response"]["warnings"],
        json!(["metadata.annotations.proxy.istio.io/config: ProxyConfig field tracing is not supported by sluice; ignored"])
    );
}

const BAD_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-route
  namespace: bookinfo
spec:
  hosts:
  - reviews
  http:
  - timeout: 3 seconds
    route:
    - destination:
        host: reviews
        subset: v1
";

/// What `sluice validate` prints for `text`, without the `file:line: ` each line starts with.
fn validate_lines(text: &str) -> Vec<String> {
    let loaded = sluice_api::decode_str(Path::new("vs.yaml"), text);
    let mut out = loaded.diagnostics;
    for r in &loaded.resources {
        out.extend(sluice_api::validate(r));
    }
    out.iter()
        .map(|d| {
            let line = d.to_string();
            let prefix = format!("vs.yaml:{}: ", d.line);
            line.strip_prefix(&prefix).unwrap_or(&line).to_string()
        })
        .collect()
}

fn object_of(text: &str) -> Value {
    yaml::parse_documents(text, 0).unwrap()[0].value.clone()
}

#[test]
fn validation_refuses_what_sluice_validate_refuses_with_its_message() {
    let object = object_of(BAD_VS);
    let answer = webhook::validate(&review(
        ("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
        "CREATE",
        object,
    ))
    .unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    let expected = validate_lines(BAD_VS);
    assert_eq!(expected.len(), 1);
    assert_eq!(response["status"]["message"], expected[0]);
    assert_eq!(
        expected[0],
        "VirtualService bookinfo/reviews-route: spec.http[0].timeout: invalid duration \"3 seconds\": expected a number with a unit (s, ms, m, h), e.g. \"3s\" or \"0.5s\""
    );

    let good = object_of(&BAD_VS.replace("3 seconds", "3s"));
    for op in ["CREATE", "UPDATE"] {
        let answer = webhook::validate(&review(
            ("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
            op,
            good.clone(),
        ))
        .unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(answer["response"].get("status").is_none());
    }
}

#[test]
fn validation_names_the_namespace_of_the_request_and_lets_other_kinds_through() {
    // No namespace in the object (the API server's URL had it).
    let mut object = object_of(BAD_VS);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let answer = webhook::validate(&review(
        ("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
        "CREATE",
        object,
    ))
    .unwrap();
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("VirtualService bookinfo/reviews-route:"),
        "{message}"
    );

    let telemetry = json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"accessLogging": [{"providers": [{"name": "envoy"}]}]}});
    let answer = webhook::validate(&review(
        ("telemetry.istio.io", "v1", "Telemetry"),
        "telemetries",
        "CREATE",
        telemetry,
    ))
    .unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("warnings").is_none(), "{answer}");

    let delete = review(
        ("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
        "DELETE",
        Value::Null,
    );
    assert_eq!(
        webhook::validate(&delete).unwrap()["response"]["allowed"],
        true
    );
}
