//! Bounded reports: one mistake repeated through a resource (the same host written 3,000 times)
//! must read as a few lines, not thousands, wherever diagnostics are printed or logged.

use std::collections::HashMap;
use std::hash::Hash;

use crate::resource::Diagnostic;

/// How many diagnostics alike [`summarize`] keeps by default before summing up the rest.
pub const MAX_ALIKE: usize = 5;

/// Keeps the first `max_alike` diagnostics of each kind and replaces the rest by one
/// diagnostic, `… and N more like this`, placed right after the last one kept.
///
/// Diagnostics are alike when they have the same severity, file and resource, and their field
/// and message differ only in numbers (`spec.hosts[3]` and `spec.hosts[7]`). The summary keeps
/// the severity (so an error still fails `validate`), sits on the line of the first one left
/// out, and names the field with its indices as `[*]`. Order is otherwise kept, so sort first.
pub fn summarize(diags: Vec<Diagnostic>, max_alike: usize) -> Vec<Diagnostic> {
    summarize_by(
        diags,
        max_alike,
        |d| {
            (
                d.severity,
                d.file.clone(),
                d.resource.clone(),
                shape(&d.field),
                shape(&d.message),
            )
        },
        |first_left_out, n| Diagnostic {
            field: any_index(&first_left_out.field),
            message: more_like_this(n),
            ..first_left_out.clone()
        },
    )
}

/// `… and N more like this`.
pub fn more_like_this(n: usize) -> String {
    format!("\u{2026} and {n} more like this")
}

/// [`summarize`] for any kind of report: `key` says which items are alike, `summary` makes the
/// line that stands for the `n` left out, from the first of them.
pub fn summarize_by<T: Clone, K: Eq + Hash>(
    items: Vec<T>,
    max_alike: usize,
    key: impl Fn(&T) -> K,
    summary: impl Fn(&T, usize) -> T,
) -> Vec<T> {
    struct Group<T> {
        total: usize,
        kept: usize,
        first_left_out: Option<T>,
    }
    let keys: Vec<K> = items.iter().map(&key).collect();
    let mut groups: HashMap<&K, Group<T>> = HashMap::new();
    for (item, k) in items.iter().zip(&keys) {
        let g = groups.entry(k).or_insert(Group {
            total: 0,
            kept: 0,
            first_left_out: None,
        });
        g.total += 1;
        if g.total == max_alike + 1 {
            g.first_left_out = Some(item.clone());
        }
    }
    let mut out = Vec::with_capacity(items.len().min(groups.len() * (max_alike + 1)));
    for (item, k) in items.into_iter().zip(&keys) {
        let Some(g) = groups.get_mut(k) else {
            continue;
        };
        if g.kept >= max_alike {
            continue;
        }
        g.kept += 1;
        out.push(item);
        if g.kept == max_alike {
            if let Some(first) = g.first_left_out.take() {
                out.push(summary(&first, g.total - max_alike));
            }
        }
    }
    out
}

/// The text with every run of digits replaced by `#`: what alike messages have in common.
pub fn shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// `spec.hosts[12].name` → `spec.hosts[*].name`.
pub fn any_index(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        match rest.find(']') {
            Some(close) if rest[..close].bytes().all(|b| b.is_ascii_digit()) => {
                out.push('*');
                rest = &rest[close..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Severity;

    fn diag(line: u32, field: &str, message: &str) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            file: "f.yaml".into(),
            line,
            resource: Some("VirtualService default/vs".into()),
            field: field.into(),
            message: message.into(),
        }
    }

    #[test]
    fn repeated_messages_are_summed_up_after_the_first_few() {
        let mut diags: Vec<Diagnostic> = (1..=3000)
            .map(|i| {
                diag(
                    7 + i,
                    &format!("spec.hosts[{i}]"),
                    "duplicate hosts in virtual service: a & a",
                )
            })
            .collect();
        diags.push(diag(4000, "spec.http", "something else"));
        let out = summarize(diags, 3);
        let lines: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "f.yaml:8: VirtualService default/vs: spec.hosts[1]: duplicate hosts in virtual service: a & a",
                "f.yaml:9: VirtualService default/vs: spec.hosts[2]: duplicate hosts in virtual service: a & a",
                "f.yaml:10: VirtualService default/vs: spec.hosts[3]: duplicate hosts in virtual service: a & a",
                "f.yaml:11: VirtualService default/vs: spec.hosts[*]: \u{2026} and 2997 more like this",
                "f.yaml:4000: VirtualService default/vs: spec.http: something else",
            ]
        );
        assert!(out[3].is_error());
    }

    #[test]
    fn different_resources_severities_and_messages_are_not_alike() {
        let a = diag(1, "spec.hosts[0]", "bad host \"a\"");
        let b = Diagnostic {
            resource: Some("VirtualService default/other".into()),
            ..a.clone()
        };
        let c = Diagnostic {
            severity: Severity::Warning,
            ..a.clone()
        };
        let d = diag(2, "spec.hosts[1]", "bad host \"b\"");
        let all = vec![a, b, c, d];
        assert_eq!(summarize(all.clone(), 1), all);
    }

    #[test]
    fn indices_and_numbers_generalize() {
        assert_eq!(
            any_index("spec.http[12].route[3].weight"),
            "spec.http[*].route[*].weight"
        );
        assert_eq!(any_index("spec.a[x]"), "spec.a[x]");
        assert_eq!(shape("port 8080 of 80"), "port # of #");
    }
}
