//! Hostile configuration: text that once crashed, stalled or ballooned the decoder. Each is
//! refused with a normal diagnostic (file, line, message) or decoded at a cost proportional to
//! its size.

mod common;

use common::{decode, render};
use sluice_api::decode::{MAX_ALIAS_NODES, MAX_DEPTH, MAX_OBJECT_BYTES, MAX_TEXT_BYTES};
use sluice_api::{Diagnostic, Spec};

/// The errors of decoding `text`, rendered.
fn errors(text: &str) -> Vec<Diagnostic> {
    decode(text)
        .diagnostics
        .into_iter()
        .filter(Diagnostic::is_error)
        .collect()
}

fn only_error(text: &str) -> Diagnostic {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", render(&errs));
    errs.into_iter().next().expect("one error")
}

/// `- - - … x`: `levels` nested block sequences on one line.
fn nested_block_sequences(levels: usize) -> String {
    format!("{}x\n", "- ".repeat(levels))
}

/// A VirtualService whose `status` (not read, so free-form) nests down to exactly `levels`
/// levels in all: root and status are the first two.
pub fn deep_virtual_service(levels: usize) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: deep\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {host: a.example.com}\nstatus: ",
    );
    text.push_str(&"{a: ".repeat(levels - 1));
    text.push('1');
    text.push_str(&"}".repeat(levels - 1));
    text.push('\n');
    text
}

#[test]
fn a_document_nested_past_the_bound_is_refused_before_anything_recurses() {
    // 2,500 levels in 5 KB overflowed the stack (and aborted the proxy) before the bound.
    let d = only_error(&nested_block_sequences(2_500));
    assert_eq!(
        d.to_string(),
        format!("t.yaml:1: document nested deeper than {MAX_DEPTH} levels")
    );

    let err = only_error(&nested_block_sequences(MAX_DEPTH + 1));
    assert_eq!(
        err.message,
        format!("document nested deeper than {MAX_DEPTH} levels")
    );
    let out = decode(&nested_block_sequences(MAX_DEPTH));
    // At the bound the text decodes (and is reported as not being a Kubernetes object).
    assert!(out
        .diagnostics
        .iter()
        .all(|d| d.message.starts_with("expected a Kubernetes object")));

    // Flow style and mappings count the same, and the line is the one that goes too deep.
    let mut flow = String::from("a: 1\nb:\n  c: ");
    flow.push_str(&"[".repeat(MAX_DEPTH));
    flow.push_str(&"]".repeat(MAX_DEPTH));
    flow.push('\n');
    assert_eq!(only_error(&flow).line, 3);
    let mut maps = String::from("kind: X\n");
    for i in 0..=MAX_DEPTH {
        maps.push_str(&" ".repeat(i));
        maps.push_str("k:\n");
    }
    let err = only_error(&maps);
    assert_eq!(err.line, MAX_DEPTH as u32 + 2, "{err}");

    let vs = decode(&deep_virtual_service(MAX_DEPTH));
    assert_eq!(vs.resources.len(), 1, "{}", render(&vs.diagnostics));
    let err = only_error(&deep_virtual_service(MAX_DEPTH + 1));
    assert!(err.message.contains("nested deeper"), "{err}");
}

#[test]
fn aliases_count_at_the_depth_they_are_used() {
    // Each alias is only 64 levels deep where it is written, but expands to 64 more.
    let inner = format!("{}x", "- ".repeat(64));
    let text = format!("a: &deep\n  {inner}\nb:\n{}*deep\n", "  - ".repeat(70));
    let err = only_error(&text);
    assert!(err.message.contains("nested deeper"), "{err}");
    assert_eq!(err.line, 4);
}

#[test]
fn alias_bombs_are_refused_by_their_expanded_size() {
    // Nine lines, a billion strings once expanded ("billion laughs").
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        let refs = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let err = only_error(&text);
    assert!(
        err.message
            .contains(&format!("more than {MAX_ALIAS_NODES} nodes")),
        "{err}"
    );

    // Nested anchors are copied once each by the loader: that counts too.
    let mut nested = String::from("a: ");
    for i in 0..100 {
        nested.push_str(&format!("&n{i} ["));
    }
    nested.push_str(&vec!["x"; 5_000].join(", "));
    nested.push_str(&"]".repeat(100));
    let err = only_error(&nested);
    assert!(err.message.contains("nodes"), "{err}");

    // A few small anchors, as real files use them, are fine.
    let ok = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: &l {app: a}}\ndata: &d {x: y}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, labels: &l {app: b}}\ndata: *d\n";
    // ... but an anchor belongs to its own document, as YAML says.
    let err = only_error(ok);
    assert_eq!(err.line, 9);
    assert!(err.message.contains("unknown anchor"), "{err}");
    let ok = ok.replace("data: *d", "data: {x: z}\nextra: [*l, *l]");
    let out = decode(&ok);
    assert_eq!(out.resources.len(), 2, "{}", render(&out.diagnostics));
}

#[test]
fn objects_larger_than_kubernetes_accepts_are_refused_but_lists_of_them_are_not() {
    let big_value = "x".repeat(MAX_OBJECT_BYTES);
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  a: {big_value}\n"
    );
    let err = only_error(&text);
    assert_eq!(err.line, 1);
    assert!(
        err.message
            .contains("larger than the 3 MiB Kubernetes accepts"),
        "{err}"
    );

    // A `kind: List` (what `kubectl get -o yaml` prints) may be larger than one object, as long
    // as each of its items is not; `items` may come before `kind`, as in kubectl's JSON.
    let item = |i: usize| {
        format!(
            "- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: c{i}}}\n  data: {{a: {}}}\n",
            "y".repeat(MAX_OBJECT_BYTES / 4)
        )
    };
    let mut list = String::from("apiVersion: v1\nitems:\n");
    for i in 0..6 {
        list.push_str(&item(i));
    }
    list.push_str("kind: List\n");
    assert!(list.len() > MAX_OBJECT_BYTES);
    let out = decode(&list);
    assert_eq!(out.resources.len(), 6, "{}", render(&out.diagnostics));

    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n- {kind: ConfigMap}\n");
    list.push_str(&format!("- data: {{a: {big_value}}}\n"));
    let err = only_error(&list);
    assert_eq!(err.line, 5);
    assert!(err.message.starts_with("an item of this List is"), "{err}");

    let huge = format!("a: {}\n", "z".repeat(MAX_TEXT_BYTES));
    let err = only_error(&huge);
    assert!(err.message.contains("larger than the 16 MiB"), "{err}");
}

#[test]
fn long_field_paths_are_bounded_in_total() {
    // 120 levels of 100-character keys, then 20,000 short leaves: each leaf's path would repeat
    // all 12,000 characters of its ancestors' keys (240 MB of paths from a 300 KB text).
    let mut text = String::new();
    for i in 0..120 {
        text.push_str(&" ".repeat(i));
        text.push_str(&"k".repeat(100));
        text.push_str(":\n");
    }
    for j in 0..20_000 {
        text.push_str(&" ".repeat(120));
        text.push_str(&format!("l{j}: 1\n"));
    }
    let err = only_error(&text);
    assert!(err.message.contains("field paths"), "{err}");
}

#[test]
fn huge_durations_are_refused_with_the_field_and_the_limit() {
    for value in [
        "99999999999999999999s",
        "99999999999999999999h",
        "315576000001s",
    ] {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: {value}\n    route:\n    - destination: {{host: a.example.com}}\n"
        );
        let err = only_error(&text);
        assert_eq!(
            err.to_string(),
            format!("t.yaml:8: VirtualService default/vs: spec.http[0].timeout: duration \"{value}\" is too long: the maximum is 315576000000s (10,000 years, the range of a protobuf Duration)")
        );
    }
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: 315576000000s\n    route:\n    - destination: {host: a.example.com}\n";
    let out = decode(text);
    let Spec::VirtualService(vs) = &out.resources[0].spec else {
        panic!("{}", render(&out.diagnostics))
    };
    assert_eq!(
        vs.http[0].timeout.map(|t| t.0.as_secs()),
        Some(315_576_000_000)
    );
}

#[test]
fn a_regex_that_compiles_huge_is_refused() {
    // A few characters that the regex crate compiles to megabytes, under its default limit of
    // 10 MiB per pattern; a thousand routes of them would take gigabytes in every proxy.
    let pattern = "(a{400}){40}";
    assert!(regex::Regex::new(pattern).is_ok());
    let text = common::doc(
        "VirtualService",
        &format!("hosts: [a.example.com]\nhttp:\n- match:\n  - uri: {{regex: \"{pattern}\"}}\n  route:\n  - destination: {{host: a.example.com}}\n"),
    );
    let out = decode(&text);
    let diags = sluice_api::validate(&out.resources[0]);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("spec.http[0].match[0].uri.regex"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("exceeds size limit"), "{}", errors[0]);
}

/// Steps (see [`sluice_api::work`]) that `work(n)` takes for `n` and `2n` items: the larger must
/// be at most 2.5 times the smaller (a quadratic path takes 4 times).
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

/// `n` HTTP routes whose numbers are written as strings and whose empty fields are null, as
/// YAML written by hand often is: each needed one more decoding pass of the whole document.
fn routes_needing_conversion(n: usize) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts: [a.example.com]\n  http:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - name: r{i}\n    match:\n    headers:\n      request:\n        set: {{x-a: '1', x-b: }}\n    route:\n    - destination: {{host: a.example.com, port: {{number: \"80\"}}}}\n      weight: \"100\"\n    - destination: {{host: a.example.com, port: {{number: 8.0}}}}\n      weight: \"0\"\n    retries: {{attempts: \"3\", retryRemoteLocalities: \"yes\"}}\n"
        ));
    }
    text
}

#[test]
fn values_needing_conversion_are_converted_in_one_pass() {
    let n = 3_000;
    let text = routes_needing_conversion(n);
    let (out, passes) = sluice_api::work::measure(|| decode(&text));
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
    // `metadata` once; `spec` once converting, and once more after its null fields were left out.
    assert!(passes <= 3, "{passes} decoding passes for {n} routes");
    let Spec::VirtualService(vs) = &out.resources[0].spec else {
        panic!("not a VirtualService")
    };
    assert_eq!(vs.http.len(), n);
    let last = &vs.http[n - 1];
    assert!(last.matches.is_empty());
    assert_eq!(
        last.route[0].destination.port.as_ref().map(|p| p.number),
        Some(80)
    );
    assert_eq!(last.route[0].weight, Some(100));
    assert_eq!(
        last.route[1].destination.port.as_ref().map(|p| p.number),
        Some(8)
    );
    let retries = last.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 3);
    let set = &last
        .headers
        .as_ref()
        .expect("headers")
        .request
        .as_ref()
        .expect("request")
        .set;
    // A null map value is left out, as if it were not written.
    assert_eq!(set.keys().collect::<Vec<_>>(), ["x-a"]);
}

#[test]
fn list_items_find_their_lines_without_rescanning_the_list() {
    assert_linear("kind: List", 1_500, |n| {
        let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
        for i in 0..n {
            text.push_str(&format!(
                "- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: c{i}}}\n  data: {{a: b, c: d}}\n"
            ));
        }
        let (out, steps) = sluice_api::work::measure(|| decode(&text));
        assert_eq!(out.resources.len(), n, "{}", render(&out.diagnostics));
        // Each item keeps its own lines: the last item's data is on its own line.
        let last = &out.resources[n - 1];
        assert_eq!(last.origin.line_of("data.a"), 3 + 4 * n as u32);
        steps
    });
}

#[test]
fn legacy_single_match_blocks_are_moved_without_rescanning_the_document() {
    assert_linear("legacy match:", 1_500, |n| {
        let mut text = String::from(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts: [a.example.com]\n  http:\n",
        );
        for i in 0..n {
            text.push_str(&format!(
                "  - match:\n      uri: {{prefix: /p{i}}}\n    route:\n    - destination: {{host: a.example.com}}\n"
            ));
        }
        let (out, steps) = sluice_api::work::measure(|| decode(&text));
        assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
        let r = &out.resources[0];
        // The moved position: `spec.http[i].match[0].uri` is on the line of `uri:`.
        let i = n - 1;
        assert_eq!(
            r.origin.line_of(&format!("spec.http[{i}].match[0].uri")),
            9 + 4 * i as u32
        );
        steps
    });
}
