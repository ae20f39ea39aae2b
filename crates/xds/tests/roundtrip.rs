//! Real config through the wire and back: every Istio resource of the seeds and of hand-written
//! cases → `Resource::spec_json` → `encode_resource` → `decode_resource` → a YAML document →
//! sluice's own decoder, which must give back the same spec and metadata.
//!
//! "The same" is exact after one trip through the wire; the first trip may only differ where
//! proto3 cannot say otherwise: a field at its default value (`weight: 0`, `rules: []`, an enum
//! at its zero value such as `mode: DISABLE`) is absent on the wire, and an enum comes back
//! written out at its zero value. `assert_equivalent` allows exactly that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice_api::{decode_str, Kind, Resource, Spec};
use sluice_xds::{collection_for_kind, decode_resource, encode_resource, McpObject};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every resource of the YAML/JSON files in `dir` that decodes (the fuzz seeds include
/// deliberately broken documents and files; what does not decode is skipped).
fn load_dir(dir: &Path) -> Vec<Resource> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        out.extend(decode_str(&file, &text).resources);
    }
    out
}

fn load_text(name: &str, text: &str) -> Vec<Resource> {
    let loaded = decode_str(Path::new(name), text);
    assert!(!loaded.has_errors(), "{name}: {:#?}", loaded.diagnostics);
    loaded.resources
}

fn mcp_object(res: &Resource) -> McpObject {
    McpObject {
        name: res.key(),
        labels: res
            .meta
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: res.meta.annotations.clone(),
        version: "42".to_string(),
        spec: res.spec_json().expect("spec_json"),
    }
}

/// One trip: the resource through MCP and sluice's decoder. Panics naming the resource on any
/// failure.
fn through_the_wire(res: &Resource) -> Resource {
    let collection = collection_for_kind(res.kind.as_str())
        .unwrap_or_else(|| panic!("no collection for {}", res.kind));
    let label = format!("{} {}", res.kind, res.key());
    let object = mcp_object(res);
    let any = encode_resource(collection.type_url, &object)
        .unwrap_or_else(|e| panic!("{label}: encode: {e}\n{:#}", object.spec));
    assert_eq!(
        any.type_url,
        "type.googleapis.com/istio.mcp.v1alpha1.Resource"
    );
    // The alias istiod before 1.24 served the collection under reads the same bytes.
    let alias = collection.aliases[0];
    let back = decode_resource(alias, &any).unwrap_or_else(|e| panic!("{label}: decode: {e}"));
    assert_eq!(back.name, object.name, "{label}");
    assert_eq!(back.labels, object.labels, "{label}");
    assert_eq!(back.annotations, object.annotations, "{label}");
    assert_eq!(back.version, "42", "{label}");
    let (namespace, name) = back.name.split_once('/').expect("ns/name");
    let doc = json!({
        "apiVersion": res.api_version,
        "kind": res.kind.as_str(),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": back.labels,
            "annotations": back.annotations,
        },
        "spec": back.spec,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let loaded = decode_str(Path::new("from-the-wire.json"), &text);
    assert!(
        !loaded.has_errors(),
        "{label}: sluice refuses what came off the wire: {:#?}\n{text}",
        loaded.diagnostics
    );
    let [decoded] = <[Resource; 1]>::try_from(loaded.resources).expect("one resource");
    assert_eq!(decoded.meta.name, res.meta.name, "{label}");
    assert_eq!(decoded.meta.namespace, res.meta.namespace, "{label}");
    assert_eq!(decoded.meta.labels, res.meta.labels, "{label}");
    assert_eq!(decoded.meta.annotations, res.meta.annotations, "{label}");
    decoded
}

/// The zero values of the schema's enums: what the wire leaves out and decoding writes back.
const ZERO_ENUMS: &[&str] = &[
    "UNSET",
    "ALLOW",
    "FROM_PROTOCOL_DEFAULT",
    "UNSPECIFIED",
    "V1",
    "DEFAULT",
    "DISABLE",
    "PASSTHROUGH",
    "TLS_AUTO",
    "MESH_EXTERNAL",
    "NONE",
    "REGISTRY_ONLY",
    "TEXT",
    // Telemetry: WorkloadMode, TagOverride.Operation.
    "CLIENT_AND_SERVER",
    "UPSERT",
];

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || ZERO_ENUMS.contains(&s.as_str()),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_default),
    }
}

/// `a` and `b` say the same in proto3: equal, except for fields present on one side only at
/// their default value.
fn assert_equivalent(a: &Value, b: &Value, path: &str, label: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => assert_equivalent(va, vb, &format!("{path}.{k}"), label),
                    None => assert!(
                        is_default(va),
                        "{label}: {path}.{k} = {va} was lost on the wire"
                    ),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    assert!(
                        is_default(vb),
                        "{label}: {path}.{k} = {vb} appeared on the wire"
                    );
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{label}: {path}: {a} vs {b}");
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                assert_equivalent(va, vb, &format!("{path}[{i}]"), label);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            assert_eq!(x.as_f64(), y.as_f64(), "{label}: {path}");
        }
        // A duration sluice keeps as written (inside a part of the spec it does not model)
        // comes back in proto3's seconds form: `24h` is `86400s`.
        (Value::String(x), Value::String(y)) if x != y => {
            let parse = |s: &str| s.parse::<sluice_api::duration::Duration>().ok();
            assert!(
                parse(x).is_some() && parse(x) == parse(y),
                "{label}: {path}: {a} became {b}"
            );
        }
        _ => assert_eq!(a, b, "{label}: {path}"),
    }
}

/// Round-trips every Istio resource of `resources`, counting them by kind; checks the first trip
/// is equivalent and the second exact.
fn round_trip_all(resources: &[Resource]) -> (BTreeMap<&'static str, usize>, usize) {
    let mut by_kind = BTreeMap::new();
    let mut exact = 0;
    for res in resources {
        if collection_for_kind(res.kind.as_str()).is_none() {
            continue;
        }
        let label = format!("{} {}", res.kind, res.key());
        let once = through_the_wire(res);
        let (before, after) = (res.spec_json().unwrap(), once.spec_json().unwrap());
        assert_equivalent(&before, &after, "spec", &label);
        if once.spec == res.spec {
            exact += 1;
        }
        let twice = through_the_wire(&once);
        assert_eq!(
            twice.spec, once.spec,
            "{label}: a second trip changed the spec"
        );
        assert_eq!(twice.spec_json(), once.spec_json(), "{label}");
        *by_kind.entry(res.kind.as_str()).or_insert(0) += 1;
    }
    (by_kind, exact)
}

#[test]
fn seed_resources_survive_the_wire() {
    let root = workspace();
    let mut resources = load_dir(&root.join("crates/api/tests/fixtures/seeds"));
    resources.extend(load_dir(&root.join("fuzz/seeds/config_decode")));
    let (by_kind, exact) = round_trip_all(&resources);
    let total: usize = by_kind.values().sum();
    eprintln!(
        "round-tripped {total} seed resources ({exact} exactly on the first trip): {by_kind:?}"
    );
    // The seeds have no Sidecar, WorkloadEntry or security resources that decode (the fuzz
    // seed with them is invalid YAML on purpose): the hand-written cases cover those.
    for (kind, min) in [
        ("ServiceEntry", 15),
        ("VirtualService", 15),
        ("Gateway", 4),
        ("DestinationRule", 2),
    ] {
        let n = by_kind.get(kind).copied().unwrap_or(0);
        assert!(
            n >= min,
            "only {n} {kind} resources round-tripped (expected ≥ {min})"
        );
    }
}

#[test]
fn hand_written_cases_survive_the_wire() {
    let text = include_str!("fixtures/wire-cases.yaml");
    let resources = load_text("wire-cases.yaml", text);
    let (by_kind, _) = round_trip_all(&resources);
    assert_eq!(
        by_kind,
        BTreeMap::from([
            ("AuthorizationPolicy", 4),
            ("DestinationRule", 1),
            ("Gateway", 1),
            ("PeerAuthentication", 1),
            ("RequestAuthentication", 1),
            ("ServiceEntry", 2),
            ("Sidecar", 2),
            ("Telemetry", 1),
            ("VirtualService", 1),
            ("WorkloadEntry", 1),
        ])
    );
}

/// The values whose JSON mapping is easiest to get wrong, checked one by one after a trip.
#[test]
fn tricky_values_come_back_as_written() {
    let text = include_str!("fixtures/wire-cases.yaml");
    let resources = load_text("wire-cases.yaml", text);
    let find = |kind: Kind, name: &str| {
        let res = resources
            .iter()
            .find(|r| r.kind == kind && r.meta.name == name)
            .unwrap();
        let collection = collection_for_kind(kind.as_str()).unwrap();
        let any = encode_resource(collection.type_url, &mcp_object(res)).unwrap();
        decode_resource(collection.type_url, &any).unwrap().spec
    };

    let dr = find(Kind::DestinationRule, "reviews");
    let tp = &dr["trafficPolicy"];
    let hash = &tp["loadBalancer"]["consistentHash"];
    // uint64 beyond 32 bits: a JSON number (proto3 JSON writes the string "8589934592").
    assert_eq!(hash["minimumRingSize"], json!(8_589_934_592u64));
    assert_eq!(hash["httpCookie"]["ttl"], json!("0.500s"));
    assert_eq!(
        dr["subsets"][0]["trafficPolicy"]["loadBalancer"]["consistentHash"]["ringHash"]
            ["minimumRingSize"],
        json!(1024)
    );
    // A oneof member at its zero value stays (it is the member that is set).
    assert_eq!(
        dr["subsets"][0]["trafficPolicy"]["loadBalancer"]["consistentHash"]["useSourceIp"],
        json!(false)
    );
    assert_eq!(
        dr["subsets"][1]["trafficPolicy"]["loadBalancer"]["consistentHash"]["maglev"]["tableSize"],
        json!(65537)
    );
    assert_eq!(
        tp["loadBalancer"]["localityLbSetting"]["distribute"][0]["to"]["us-west/zone1/*"],
        json!(80)
    );
    assert_eq!(tp["loadBalancer"]["warmupDurationSecs"], json!("60s"));
    assert_eq!(tp["connectionPool"]["tcp"]["idleTimeout"], json!("90s"));
    assert_eq!(
        tp["connectionPool"]["tcp"]["connectTimeout"],
        json!("0.030s")
    );
    assert_eq!(
        tp["connectionPool"]["http"]["h2UpgradePolicy"],
        json!("UPGRADE")
    );
    // An int32 at 0 is not on the wire; a wrapper at 0 is.
    assert!(tp["connectionPool"]["http"]
        .get("http1MaxPendingRequests")
        .is_none());
    assert_eq!(tp["outlierDetection"]["consecutive5xxErrors"], json!(0));
    assert_eq!(tp["outlierDetection"]["consecutiveGatewayErrors"], json!(7));
    assert_eq!(tp["outlierDetection"]["baseEjectionTime"], json!("900s"));
    assert_eq!(tp["tls"]["insecureSkipVerify"], json!(false));
    // An enum at its zero value is written out.
    assert_eq!(tp["portLevelSettings"][0]["tls"]["mode"], json!("DISABLE"));
    assert_eq!(
        tp["portLevelSettings"][0]["loadBalancer"]["simple"],
        json!("LEAST_REQUEST")
    );
    assert_eq!(tp["proxyProtocol"]["version"], json!("V2"));
    assert_eq!(tp["tunnel"]["targetPort"], json!(8443));

    let vs = find(Kind::VirtualService, "reviews");
    let route = &vs["http"][0];
    assert_eq!(route["timeout"], json!("1.500s"));
    assert_eq!(route["retries"]["perTryTimeout"], json!("0.100s"));
    assert_eq!(route["retries"]["retryRemoteLocalities"], json!(false));
    assert!(route["retries"].get("attempts").is_none());
    assert_eq!(route["fault"]["abort"]["httpStatus"], json!(0));
    assert_eq!(route["fault"]["delay"]["exponentialDelay"], json!("2s"));
    assert_eq!(route["fault"]["delay"]["percentage"]["value"], json!(0.1));
    assert_eq!(route["mirrorPercentage"]["value"], json!(12.5));
    assert_eq!(route["mirrorPercent"], json!(0));
    // Go's form, which Istio accepts and sluice keeps as written here, in proto3's.
    assert_eq!(route["corsPolicy"]["maxAge"], json!("86400s"));
    assert_eq!(route["corsPolicy"]["unmatchedPreflights"], json!("IGNORE"));
    assert_eq!(route["match"][0]["headers"]["x-any"], json!({"prefix": ""}));
    assert_eq!(
        vs["http"][1]["redirect"]["derivePort"],
        json!("FROM_REQUEST_PORT")
    );
    assert_eq!(vs["http"][1]["redirect"]["redirectCode"], json!(308));
    assert_eq!(vs["http"][2]["redirect"]["port"], json!(0));
    assert_eq!(
        vs["http"][4]["directResponse"]["body"]["bytes"],
        json!("aGVsbG8gd29ybGQ=")
    );
    assert_eq!(vs["http"][7]["fault"]["delay"]["fixedDelay"], json!("0s"));
    assert_eq!(vs["http"][7]["fault"]["delay"]["percent"], json!(50));

    let pa = find(Kind::PeerAuthentication, "strict-but-8080");
    assert_eq!(pa["mtls"], json!({"mode": "UNSET"}));
    assert_eq!(pa["portLevelMtls"]["8080"], json!({"mode": "DISABLE"}));
    assert_eq!(pa["portLevelMtls"]["9091"], json!({"mode": "UNSET"}));

    let sidecar = find(Kind::Sidecar, "locked");
    assert_eq!(
        sidecar["outboundTrafficPolicy"],
        json!({"mode": "REGISTRY_ONLY"})
    );

    let ap = find(Kind::AuthorizationPolicy, "allow-nothing");
    assert_eq!(ap, json!({"action": "ALLOW"}));
    let ap = find(Kind::AuthorizationPolicy, "ext-authz");
    assert_eq!(ap["provider"], json!({"name": "my-ext-authz"}));
    assert_eq!(ap["targetRefs"][0]["kind"], json!("Gateway"));
    let ap = find(Kind::AuthorizationPolicy, "allow-reads");
    assert_eq!(ap["rules"][1], json!({}));

    let ra = find(Kind::RequestAuthentication, "jwt");
    assert_eq!(ra["jwtRules"][0]["timeout"], json!("2s"));
    assert_eq!(ra["jwtRules"][0]["forwardOriginalToken"], json!(true));
    assert_eq!(
        ra["jwtRules"][0]["fromHeaders"][0],
        json!({"name": "x-jwt", "prefix": "Bearer "})
    );
    assert_eq!(ra["jwtRules"][1]["jwks"], json!("{\"keys\": []}"));
}

/// MeshConfig goes bare, as istiod sends it, and only the fields sluice reads travel: the rest
/// of a real mesh config (most of defaultConfig, other extension providers, …) is dropped, not
/// refused.
#[test]
fn mesh_config_survives_the_wire() {
    let mesh = json!({
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        "accessLogFile": "/dev/stdout",
        "accessLogEncoding": "JSON",
        "accessLogFormat": "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\n",
        "connectTimeout": "2.5s",
        "rootNamespace": "istio-system",
        "ingressClass": "istio",
        "ingressControllerMode": "STRICT",
        "ingressService": "istio-ingressgateway",
        "ingressSelector": "ingressgateway",
        "enableAutoMtls": false,
        "defaultHttpRetryPolicy": {"attempts": 2, "retryOn": "5xx"},
        "defaultConfig": {
            "discoveryAddress": "istiod.istio-system.svc:15012",
            "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"},
            "holdApplicationUntilProxyStarts": true,
            "tracing": {"zipkin": {"address": "zipkin:9411"}, "sampling": 1.0}
        },
        "enablePrometheusMerge": true,
        "extensionProviders": [{"name": "otel", "opentelemetry": {"service": "otel.observability", "port": 4317}}],
        "trustDomain": "cluster.local",
        "accessLogFile2": null
    });
    let collection = collection_for_kind("MeshConfig").unwrap();
    assert_eq!(collection.type_url, "core/v1alpha1/MeshConfig");
    let object = McpObject {
        name: String::new(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        version: String::new(),
        spec: mesh.clone(),
    };
    let any = encode_resource(collection.type_url, &object).unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig"
    );
    let back = decode_resource("mesh.istio.io/v1alpha1/MeshConfig", &any).unwrap();
    assert_eq!(back.name, "");
    assert_eq!(
        back.spec,
        json!({
            "connectTimeout": "2.500s",
            "ingressClass": "istio",
            "ingressService": "istio-ingressgateway",
            "ingressControllerMode": "STRICT",
            "accessLogFile": "/dev/stdout",
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
            "accessLogFormat": "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\n",
            "accessLogEncoding": "JSON",
            "rootNamespace": "istio-system",
            "enableAutoMtls": false,
            "ingressSelector": "ingressgateway",
            "defaultHttpRetryPolicy": {"attempts": 2, "retryOn": "5xx"},
            "defaultConfig": {
                "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"},
                "tracing": {"zipkin": {"address": "zipkin:9411"}, "sampling": 1.0}
            },
            "extensionProviders": [{"name": "otel", "opentelemetry": {"service": "otel.observability", "port": 4317}}],
        })
    );

    // What sluice decodes from the istio ConfigMap with this mesh, and from the wire's JSON.
    let configmap = |mesh: &Value| {
        let text = serde_json::to_string(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": serde_json::to_string(mesh).unwrap()},
        }))
        .unwrap();
        let [res] = <[Resource; 1]>::try_from(load_text("istio.json", &text)).unwrap();
        match &res.spec {
            Spec::ConfigMap { mesh: Some(m), .. } => m.as_ref().clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(configmap(&back.spec), configmap(&mesh));

    // The seeds' mesh config, as the control plane serves it (sluice's MeshConfig as JSON).
    let seed = load_dir(&workspace().join("crates/api/tests/fixtures/seeds"));
    let seed_mesh = seed
        .iter()
        .find_map(|r| match &r.spec {
            Spec::ConfigMap { mesh: Some(m), .. } => Some(m.as_ref().clone()),
            _ => None,
        })
        .expect("seed 001's istio ConfigMap");
    let spec = serde_json::to_value(&seed_mesh).unwrap();
    let any = encode_resource(
        collection.type_url,
        &McpObject {
            spec: spec.clone(),
            ..object
        },
    )
    .unwrap();
    let back = decode_resource(collection.type_url, &any).unwrap();
    assert_equivalent(&spec, &back.spec, "mesh", "seed mesh config");
    // Equal but for enums now written at their zero value (`ingressControllerMode: UNSPECIFIED`).
    let decoded = serde_json::to_value(configmap(&back.spec)).unwrap();
    assert_equivalent(&spec, &decoded, "mesh", "seed mesh config");
    assert_eq!(
        decoded["outboundTrafficPolicy"],
        spec["outboundTrafficPolicy"]
    );
    assert_eq!(decoded["accessLogFile"], spec["accessLogFile"]);
}

/// Kubernetes kinds travel as a Struct in the same envelope; integral numbers come back as
/// integers, so `port: 80` still decodes as a u32.
#[test]
fn kubernetes_kinds_travel_as_struct() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: r, namespace: default, labels: {app: r}}
spec:
  selector: {app: r}
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 9080, targetPort: 8080}
  - {name: tcp-db, port: 5432, targetPort: db, appProtocol: tcp}
---
apiVersion: v1
kind: Endpoints
metadata: {name: r, namespace: default}
subsets:
- addresses: [{ip: 10.1.2.3}, {ip: 10.1.2.4, hostname: r-1}]
  ports: [{name: http, port: 8080}]
"#;
    let resources = load_text("kube.yaml", text);
    let mut seen = 0;
    for res in resources
        .iter()
        .filter(|r| matches!(r.kind, Kind::Service | Kind::Endpoints))
    {
        let type_url = format!("core/v1/{}", res.kind);
        let fields = match &res.spec {
            Spec::Endpoints(_) => res.spec_json().unwrap(),
            _ => json!({ "spec": res.spec_json().unwrap() }),
        };
        let object = McpObject {
            spec: fields.clone(),
            ..mcp_object(res)
        };
        let any = encode_resource(&type_url, &object).unwrap();
        let back = decode_resource(&type_url, &any).unwrap();
        assert_eq!(back.spec, fields, "{}", res.key());
        let mut doc = json!({
            "apiVersion": "v1",
            "kind": res.kind.as_str(),
            "metadata": {"name": res.meta.name, "namespace": res.meta.namespace},
        });
        for (k, v) in back.spec.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let [decoded] = <[Resource; 1]>::try_from(load_text("k.json", &doc.to_string())).unwrap();
        assert_eq!(decoded.spec, res.spec);
        seen += 1;
    }
    assert_eq!(seen, 2);
}
