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
/// field of a served Ingress (kept, cloned and dropped by every step), a List of them, an
/// ignored kind, a bare sequence, the mesh config's embedded text, and an alias that expands
/// to the full depth.
fn deep_documents(levels: usize) -> String {
    let nest =
        |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    let mut text = String::new();
    // root, spec, defaultBackend: three levels before the nest (a backend `resource` is kept
    // as written).
    text.push_str(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: deep\nspec:\n  defaultBackend:\n    resource: {}\n",
        nest("{a: ", "}", levels - 3)
    ));
    // root, items, item, spec, defaultBackend.
    text.push_str(&format!(
        "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: Ingress\n  metadata: {{name: deep-in-list}}\n  spec:\n    defaultBackend:\n      resource: {}\n",
        nest("{a: ", "}", levels - 5)
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
    // Every document is too deep, and each is refused on its own (as kubectl reads documents
    // one by one), before anything is built from it.
    assert!(served.is_empty(), "{served:?}");
    let deep: Vec<String> = diags
        .iter()
        .filter(|d| d.message.contains("nested deeper"))
        .map(ToString::to_string)
        .collect();
    let bound = format!("document nested deeper than {MAX_DEPTH} levels");
    assert_eq!(
        deep,
        [
            format!("deep.yaml:7: {bound}"),
            format!("deep.yaml:17: {bound}"),
            format!("deep.yaml:22: {bound}"),
            format!("deep.yaml:24: {bound}"),
            format!(
                "deep.yaml:30: ConfigMap istio-system/istio: data.mesh: invalid mesh config (line 1 of the mesh text): {bound}"
            ),
            format!("deep.yaml:33: {bound}"),
        ]
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

/// Steps (see [`sluice_api::work`]: host patterns and label sets compared, table entries
/// visited) that `work(n)` takes for `n` and `2n` items: the larger must be at most 2.5 times
/// the smaller (a quadratic path takes 4 times).
fn assert_linear(what: &str, n: usize, work: impl Fn(usize) -> u64) {
    let small = work(n);
    let large = work(2 * n);
    assert!(small > 0, "{what}: nothing was counted");
    assert!(
        large * 2 <= small * 5,
        "{what}: {n} items took {small} steps, {} took {large}",
        2 * n
    );
}

fn decoded(text: &str) -> Vec<Resource> {
    let loaded = decode_str(Path::new("many.yaml"), text);
    let errors: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.resources
}

fn gateway_proxy() -> ProxyIdentity {
    ProxyIdentity {
        namespace: "istio-system".into(),
        ..proxy(ProxyKind::Gateway)
    }
}

/// A Gateway with `n` servers (one host each, on one port or each on its own), a VirtualService
/// per server host, and one for every host (`*`).
fn gateway_with_servers(n: usize, same_port: bool) -> String {
    let mut text = String::from("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: istio-system\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n");
    for i in 0..n {
        let port = if same_port { 80 } else { 8000 + i };
        text.push_str(&format!(
            "  - port: {{number: {port}, name: http-{i}, protocol: HTTP}}\n    hosts: [h{i}.example.com]\n"
        ));
    }
    for i in 0..n {
        text.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs{i}\n  namespace: istio-system\nspec:\n  hosts: [h{i}.example.com]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /{i}}}}}]\n    route:\n    - destination: {{host: h{i}.example.com}}\n"));
    }
    text.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: all\n  namespace: istio-system\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: a.example.com}\n");
    text
}

#[test]
fn a_gateway_with_many_servers_on_one_port_compiles_in_linear_work() {
    assert_linear("servers on one port", 500, |n| {
        let resources = decoded(&gateway_with_servers(n, true));
        let (snapshot, steps) =
            sluice_api::work::measure(|| compile(&resources, &gateway_proxy(), 1));
        let vhosts = snapshot.gateway_virtual_hosts(80);
        // One virtual host per server host, each with its own rule and then the catch-all.
        assert_eq!(vhosts.len(), n);
        let last = format!("h{}.example.com", n - 1);
        let vhost = vhosts.iter().find(|v| *v.domain == *last).expect("vhost");
        assert_eq!(vhost.rules.len(), 2);
        steps
    });
}

#[test]
fn a_gateway_with_many_ports_compiles_in_linear_work() {
    assert_linear("servers on their own ports", 500, |n| {
        let resources = decoded(&gateway_with_servers(n, false));
        let (snapshot, steps) =
            sluice_api::work::measure(|| compile(&resources, &gateway_proxy(), 1));
        let port = u16::try_from(8000 + n - 1).expect("port");
        let vhosts = snapshot.gateway_virtual_hosts(port);
        assert_eq!(vhosts.len(), 1);
        assert_eq!(vhosts[0].rules.len(), 2);
        steps
    });
}

#[test]
fn analyzing_a_gateway_with_many_servers_takes_linear_work() {
    assert_linear("analyze Gateway servers", 500, |n| {
        let resources = decoded(&gateway_with_servers(n, false));
        let (messages, steps) =
            sluice_api::work::measure(|| sluice_model::analyze::analyze(&resources));
        assert!(
            !messages.iter().any(|m| m.code == "IST0132"),
            "every VirtualService host is admitted: {messages:#?}"
        );
        steps
    });
}

/// `n` mesh VirtualServices for one host: each pair conflicts (IST0109). Istio lists every
/// conflicting VirtualService in each message, which made the output grow with the square of
/// `n`; the lists are cut short, so the output grows with `n`.
#[test]
fn many_virtual_services_for_one_host_give_output_linear_in_their_number() {
    let output = |n: usize| {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs{i}\nspec:\n  hosts: [a.example.com]\n  http:\n  - match: [{{uri: {{prefix: /p{i}}}}}]\n    route:\n    - destination: {{host: a.example.com}}\n"));
        }
        let resources = decoded(&text);
        let (messages, steps) =
            sluice_api::work::measure(|| sluice_model::analyze::analyze(&resources));
        let conflicts: Vec<&sluice_model::analyze::Message> =
            messages.iter().filter(|m| m.code == "IST0109").collect();
        assert_eq!(conflicts.len(), n);
        let bytes: usize = messages.iter().map(|m| m.text.len()).sum();
        (bytes as u64, steps, conflicts[0].text.clone())
    };
    let (small, small_steps, _) = output(500);
    let (large, large_steps, first) = output(1_000);
    assert!(large * 2 <= small * 5, "500: {small} bytes, 1000: {large}");
    assert!(
        large_steps * 2 <= small_steps * 5,
        "500: {small_steps} steps, 1000: {large_steps}"
    );
    assert!(
        first.starts_with("The VirtualServices default/vs0,default/vs1,"),
        "{first}"
    );
    assert!(first.contains("and 992 more"), "{first}");
}

#[test]
fn a_sidecar_with_many_egress_hosts_compiles_in_linear_work() {
    assert_linear("Sidecar egress hosts", 500, |n| {
        let mut text = String::from("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\nspec:\n  egress:\n  - hosts:\n");
        for i in 0..n {
            text.push_str(&format!("    - ./h{i}.example.com\n"));
        }
        for i in 0..n {
            text.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se{i}\nspec:\n  hosts: [h{i}.example.com, x{i}.example.org]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs{i}\nspec:\n  hosts: [h{i}.example.com]\n  http:\n  - route:\n    - destination: {{host: h{i}.example.com}}\n"));
        }
        let resources = decoded(&text);
        let (snapshot, steps) =
            sluice_api::work::measure(|| compile(&resources, &proxy(ProxyKind::Sidecar), 1));
        // The egress hosts import the h* names, not the x* ones.
        assert_eq!(snapshot.services.len(), n);
        assert_eq!(snapshot.virtual_hosts().count(), n);
        steps
    });
}

#[test]
fn destination_rules_are_analyzed_in_linear_work() {
    assert_linear("DestinationRules and services", 500, |n| {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se{i}\nspec:\n  hosts: [h{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.{}.{}, labels: {{v: v{i}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr{i}\nspec:\n  host: h{i}.example.com\n  subsets: [{{name: v1, labels: {{v: v{i}}}}}, {{name: v2, labels: {{v: none}}}}]\n", i / 250, i % 250 + 1));
        }
        let resources = decoded(&text);
        let (messages, steps) =
            sluice_api::work::measure(|| sluice_model::analyze::analyze(&resources));
        // Only each rule's second subset selects nothing.
        let empty = messages.iter().filter(|m| m.code == "IST0173").count();
        assert_eq!(empty, n, "{messages:#?}");
        steps
    });
}

#[test]
fn subsets_are_matched_with_endpoints_in_linear_work() {
    assert_linear("subsets and endpoints", 500, |n| {
        let mut text = String::from("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints:\n");
        for i in 0..n {
            text.push_str(&format!(
                "  - {{address: 10.0.{}.{}, labels: {{app: a, v: v{i}}}}}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        text.push_str("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\nspec:\n  host: a.example.com\n  subsets:\n");
        for i in 0..n {
            text.push_str(&format!(
                "  - {{name: s{i}, labels: {{app: a, v: {}}}}}\n",
                if i % 2 == 0 {
                    format!("v{i}")
                } else {
                    format!("none{i}")
                }
            ));
        }
        let resources = decoded(&text);
        let (messages, steps) =
            sluice_api::work::measure(|| sluice_model::analyze::analyze(&resources));
        let empty = messages.iter().filter(|m| m.code == "IST0173").count();
        assert_eq!(empty, n / 2, "{messages:#?}");
        steps
    });
}

/// Gateway servers that take their certificate from a Secret (`credentialName`): each Secret is
/// found by name, not by looking through every resource.
#[test]
fn gateway_credentials_are_found_in_linear_work() {
    assert_linear("credentialName Secrets", 300, |n| {
        let mut text = String::from("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: istio-system\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n");
        for i in 0..n {
            text.push_str(&format!(
                "  - port: {{number: 443, name: https-{i}, protocol: HTTPS}}\n    hosts: [h{i}.example.com]\n    tls: {{mode: SIMPLE, credentialName: cert-{i}}}\n"
            ));
        }
        for i in 0..n {
            text.push_str(&format!("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cert-{i}\n  namespace: istio-system\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: c{i}\n  tls.key: k{i}\n"));
        }
        let resources = decoded(&text);
        let (snapshot, steps) = sluice_api::work::measure(|| {
            let snapshot = compile(&resources, &gateway_proxy(), 1);
            let messages = sluice_model::analyze::analyze(&resources);
            let references = sluice_model::references::check(&resources);
            (snapshot, messages, references)
        });
        let (snapshot, messages, references) = snapshot;
        assert!(
            snapshot.diagnostics.is_empty(),
            "{:?}",
            snapshot.diagnostics
        );
        assert!(references.is_empty(), "{references:?}");
        // Every Secret is found (no IST0101); their `c{i}` content is no certificate, which
        // IST0161 says once per Secret, as Istio does.
        assert!(!messages.iter().any(|m| m.code == "IST0101"));
        assert_eq!(
            messages.iter().filter(|m| m.code == "IST0161").count(),
            n,
            "{messages:?}"
        );
        let port = &snapshot.gateway_ports()[0];
        assert_eq!(port.servers.len(), n);
        steps
    });
}

/// ServiceEntries and Services that select WorkloadEntries by label: each finds its workloads
/// through the label they carry, not by looking at every workload of the namespace.
#[test]
fn workload_selectors_find_their_workloads_in_linear_work() {
    assert_linear("workload selectors", 500, |n| {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we{i}\nspec:\n  address: 10.1.{}.{}\n  labels: {{app: a{i}, tier: web}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se{i}\nspec:\n  hosts: [h{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: a{i}, tier: web}}}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  selector: {{app: a{i}}}\n  ports: [{{port: 80, name: http}}]\n", i / 250, i % 250 + 1));
        }
        let resources = decoded(&text);
        let (services, steps) =
            sluice_api::work::measure(|| sluice_model::registry::services_from(&resources));
        let se = services
            .iter()
            .find(|s| *s.hostname == *format!("h{}.example.com", n - 1))
            .expect("ServiceEntry service");
        assert_eq!(se.endpoints.len(), 1);
        let svc = services
            .iter()
            .find(|s| *s.hostname == *format!("s{}.default.svc.cluster.local", n - 1))
            .expect("Service");
        assert_eq!(svc.endpoints.len(), 1);
        steps
    });
}
