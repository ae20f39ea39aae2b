//! Hostile configuration through the whole pipeline a proxy runs on every edit: decode, validate,
//! compile (and the analyzers and reference checks of `sluice analyze`/`validate`). Whatever a
//! file says, the work must fit a small stack, stay roughly linear in its size, and report a
//! bounded number of diagnostics.

use std::path::Path;

use sluice_api::decode::MAX_DEPTH;
use sluice_api::{decode_str, validate, Diagnostic, Resource};
use sluice_model::{compile, ProxyIdentity, ProxyKind};

/// Decoding runs on tokio workers (2 MiB stacks) and on `validate`'s main thread; everything
/// must fit in half of the smaller one.
const STACK: usize = 1024 * 1024;

fn proxy(kind: ProxyKind) -> ProxyIdentity {
    ProxyIdentity {
        namespace: "default".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())]
            .into_iter()
            .collect(),
        service_account: None,
        kind,
    }
}

/// What a proxy does with a file, and what `sluice validate`/`analyze` do: every diagnostic.
fn pipeline(text: &str) -> (Vec<Resource>, Vec<Diagnostic>) {
    let loaded = decode_str(Path::new("deep.yaml"), text);
    let mut diags = loaded.diagnostics;
    let mut served = Vec::new();
    for r in loaded.resources {
        let problems = validate(&r);
        if !problems.iter().any(Diagnostic::is_error) {
            served.push(r);
        }
        diags.extend(problems);
    }
    for kind in [ProxyKind::Sidecar, ProxyKind::Gateway] {
        let snapshot = compile(&served, &proxy(kind), 1);
        diags.extend(snapshot.diagnostics.iter().cloned());
    }
    diags.extend(sluice_model::references::check(&served));
    let _ = sluice_model::analyze::analyze(&served);
    (served, diags)
}

/// Runs `f` on a thread with a [`STACK`]-byte stack; a stack overflow aborts the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// Documents nested to exactly `levels`, in each place a deep document can reach: an untyped
/// field of a served VirtualService (kept, cloned and dropped by every step), a List of them, an
/// ignored kind, a bare sequence, the mesh config's embedded text, and an alias that expands
/// to the full depth.
fn deep_documents(levels: usize) -> String {
    let nest =
        |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    let mut text = String::new();
    // root, spec, http, http[0], corsPolicy: five levels before the nest.
    text.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: deep\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {{host: a.example.com}}\n    corsPolicy: {}\n",
        nest("{a: ", "}", levels - 4)
    ));
    // root, items, item, spec, http, http[0], corsPolicy.
    text.push_str(&format!(
        "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {{name: deep-in-list}}\n  spec:\n    hosts: [b.example.com]\n    http:\n    - route: [{{destination: {{host: b.example.com}}}}]\n      corsPolicy: {}\n",
        nest("{a: ", "}", levels - 6)
    ));
    text.push_str(&format!(
        "---\napiVersion: example.com/v1\nkind: Unknown\nmetadata: {{name: x}}\nspec: {}\n",
        nest("[", "]", levels - 1)
    ));
    text.push_str(&format!("---\n{}x\n", "- ".repeat(levels)));
    // The embedded mesh text is decoded on its own: its root counts as level 1 again.
    text.push_str(&format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: '{}'\n",
        nest("{a: ", "}", levels)
    ));
    let half = levels / 2;
    text.push_str(&format!(
        "---\nanchor: &deep {}\nuse: {}*deep{}\n",
        nest("[", "]", half),
        "[".repeat(levels - half - 1),
        "]".repeat(levels - half - 1)
    ));
    text
}

#[test]
fn a_document_at_the_depth_bound_decodes_validates_and_compiles_on_a_1_mib_stack() {
    let (served, diags) = on_small_stack(|| pipeline(&deep_documents(MAX_DEPTH)));
    let names: Vec<&str> = served.iter().map(|r| r.meta.name.as_str()).collect();
    assert!(names.contains(&"deep"), "{names:?} {diags:#?}");
    assert!(names.contains(&"deep-in-list"), "{names:?} {diags:#?}");
    assert!(
        !diags.iter().any(|d| d.message.contains("nested deeper")),
        "{diags:#?}"
    );
}

#[test]
fn a_document_just_past_the_depth_bound_is_refused_on_a_1_mib_stack() {
    let (served, diags) = on_small_stack(|| pipeline(&deep_documents(MAX_DEPTH + 1)));
    // One syntax-level error refuses the whole text, before anything is built from it.
    assert!(served.is_empty(), "{served:?}");
    let deep: Vec<String> = diags
        .iter()
        .filter(|d| d.message.contains("nested deeper"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        deep,
        [format!(
            "deep.yaml:10: document nested deeper than {MAX_DEPTH} levels"
        )]
    );
}

#[test]
fn five_kb_nested_2500_levels_is_an_error_not_a_stack_overflow() {
    let text = format!("{}x\n", "- ".repeat(2_500));
    let (_, diags) = on_small_stack(move || pipeline(&text));
    let rendered: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [format!(
            "deep.yaml:1: document nested deeper than {MAX_DEPTH} levels"
        )]
    );
}

/// `hosts:` naming `host` `n` times, one route.
fn repeated_host_virtual_service(host: &str, n: usize) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts:\n",
    );
    for _ in 0..n {
        text.push_str(&format!("  - {host}\n"));
    }
    text.push_str(&format!(
        "  http:\n  - route:\n    - destination:\n        host: {host}\n"
    ));
    text
}

/// The file: 48 KB naming one host 3,000 times made 4.5 million diagnostics (one per
/// pair), 1.6 GB in a running sidecar and 955 MiB of log. Now: one per repeated host, summed up
/// to a few lines wherever they are printed.
#[test]
fn one_host_written_3000_times_gives_one_error_per_repeat_summed_up_to_a_few_lines() {
    let (served, diags) = pipeline(&repeated_host_virtual_service("a.example.com", 3_000));
    assert!(served.is_empty());
    let duplicates = diags
        .iter()
        .filter(|d| {
            d.message == "duplicate hosts in virtual service: a.example.com & a.example.com"
        })
        .count();
    assert_eq!(duplicates, 2_999, "{}", diags.len());
    assert_eq!(diags.len(), 2_999);
    let shown = sluice_api::diagnostics::summarize(diags, sluice_api::diagnostics::MAX_ALIKE);
    let lines: Vec<String> = shown.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(
        lines[5],
        "deep.yaml:13: VirtualService default/vs: spec.hosts[*]: \u{2026} and 2994 more like this"
    );
}

/// 3,000 hosts × 3,000 routes, valid: every step stays linear in what it reports.
#[test]
fn three_thousand_hosts_and_routes_report_linearly() {
    let n = 3_000;
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts:\n",
    );
    for i in 0..n {
        text.push_str(&format!("  - h{i}.example.com\n"));
    }
    text.push_str("  http:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - match:\n    - uri: {{prefix: /p{i}}}\n    route:\n    - destination: {{host: h{i}.example.com, subset: s{i}}}\n"
        ));
    }
    let (served, diags) = pipeline(&text);
    assert_eq!(served.len(), 1, "{diags:#?}");
    // Per proxy kind at most one diagnostic per route (unknown host / subset), plus references.
    assert!(diags.len() <= 4 * n, "{}", diags.len());
    let shown = sluice_api::diagnostics::summarize(diags, sluice_api::diagnostics::MAX_ALIKE);
    assert!(shown.len() <= 24, "{shown:#?}");
}

/// A ServiceEntry's hosts × ports are services (and clusters in every proxy): 3,000 × 3,000
/// were nine million clusters. Refused, naming the field.
#[test]
fn a_service_entry_with_too_many_host_port_pairs_is_refused() {
    let n = 3_000;
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  resolution: DNS\n  hosts:\n",
    );
    for i in 0..n {
        text.push_str(&format!("  - h{i}.example.com\n"));
    }
    text.push_str("  ports:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - {{number: {}, name: http-{i}, protocol: HTTP}}\n",
            1000 + i
        ));
    }
    let (served, diags) = pipeline(&text);
    assert!(served.is_empty());
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [format!(
            "deep.yaml:3008: ServiceEntry default/se: spec.ports: 3000 hosts × 3000 ports make 9000000 services, each with its own clusters in every proxy; at most {} are allowed in one ServiceEntry: split it",
            sluice_api::validate::MAX_HOST_PORTS
        )]
    );
}

/// A DestinationRule's subsets multiply its host's ports. 200 × 200 would be 40,200 clusters; the
/// subsets past the bound are left out with a warning on the DestinationRule, and the endpoints
/// each subset selects are found once, not per port.
#[test]
fn subsets_times_ports_are_bounded_per_service() {
    let n = 200;
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  resolution: STATIC\n  hosts: [a.example.com]\n  ports:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - {{number: {}, name: http-{i}, protocol: HTTP}}\n",
            1000 + i
        ));
    }
    text.push_str("  endpoints:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - {{address: 10.0.{}.{}, labels: {{v: v{i}}}}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    text.push_str("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\nspec:\n  host: a.example.com\n  subsets:\n");
    for i in 0..n {
        text.push_str(&format!("  - {{name: v{i}, labels: {{v: v{i}}}}}\n"));
    }
    let loaded = decode_str(Path::new("dr.yaml"), &text);
    assert_eq!(loaded.resources.len(), 2, "{:?}", loaded.diagnostics);
    let snapshot = compile(&loaded.resources, &proxy(ProxyKind::Sidecar), 1);
    let max = sluice_model::snapshot::MAX_CLUSTERS_PER_SERVICE;
    assert!(
        snapshot.clusters.len() <= max,
        "{}",
        snapshot.clusters.len()
    );
    let kept = max / n - 1;
    let warning: Vec<String> = snapshot
        .diagnostics
        .iter()
        .filter(|d| d.field == "spec.subsets")
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warning,
        [format!("dr.yaml:{}: DestinationRule default/dr: spec.subsets: warning: {n} subsets for the {n} ports of a.example.com make more than {max} clusters; only the first {kept} subsets are served", 2 * n + 17)]
    );
    // Each served subset cluster has exactly the one endpoint its labels select.
    let c = &snapshot.clusters["outbound|1005|v7|a.example.com"];
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].labels["v"], "v7");
    assert!(!snapshot
        .clusters
        .contains_key(format!("outbound|1000|v{kept}|a.example.com").as_str()));
}
