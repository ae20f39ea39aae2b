//! OpenMetrics (what prometheus-client writes) to Prometheus text format 0.0.4 (what Envoy
//! serves): family names, `le` last in bucket labels, no `# EOF` / `# UNIT`.

use std::fmt::Write as _;

/// Rewrites prometheus-client's OpenMetrics text into Prometheus text format 0.0.4 as Envoy serves it.
pub fn openmetrics_to_prometheus(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 256);
    let mut pending_help: Option<(&str, &str)> = None;
    let mut in_histogram = false;
    for line in src.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            // 0.0.4 declares a family by its sample name; OpenMetrics by the name without suffix.
            let (suffix, ty) = match ty {
                "counter" => ("_total", "counter"),
                "gauge" => ("", "gauge"),
                "histogram" => ("", "histogram"),
                "info" => ("_info", "gauge"),
                _ => ("", "untyped"),
            };
            in_histogram = ty == "histogram";
            if let Some((help_name, help)) = pending_help.take() {
                if help_name == name {
                    let _ = writeln!(out, "# HELP {name}{suffix} {help}");
                }
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {ty}");
            continue;
        }
        if line.starts_with('#') {
            // `# EOF`, `# UNIT`: OpenMetrics-only.
            continue;
        }
        if in_histogram {
            if let Some(rewritten) = move_le_last(line) {
                out.push_str(&rewritten);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `x_bucket{le="1.0",a="b"} 3` → `x_bucket{a="b",le="1"} 3`. Returns `None` for lines that are not
/// bucket samples with a leading `le`.
fn move_le_last(line: &str) -> Option<String> {
    let open = line.find("_bucket{le=\"")? + "_bucket{".len();
    let value_start = open + "le=\"".len();
    let value_len = line[value_start..].find('"')?;
    let le = &line[value_start..value_start + value_len];
    let le = le.strip_suffix(".0").unwrap_or(le);
    let after_le = value_start + value_len + 1;
    let rest = &line[after_le..];
    // The remaining labels run to the `}` that is outside any quoted value.
    let (labels, tail) = if let Some(stripped) = rest.strip_prefix(',') {
        let end = closing_brace(stripped)?;
        (&stripped[..end], &stripped[end + 1..])
    } else {
        ("", rest.strip_prefix('}')?)
    };
    let mut s = String::with_capacity(line.len() + 2);
    s.push_str(&line[..open]);
    if !labels.is_empty() {
        s.push_str(labels);
        s.push(',');
    }
    let _ = write!(s, "le=\"{le}\"}}{tail}");
    Some(s)
}

fn closing_brace(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_moves_last() {
        assert_eq!(
            move_le_last(r#"h_bucket{le="1.0",a="x}\"y",b="z"} 3"#).as_deref(),
            Some(r#"h_bucket{a="x}\"y",b="z",le="1"} 3"#)
        );
        assert_eq!(
            move_le_last(r#"h_bucket{le="+Inf"} 3"#).as_deref(),
            Some(r#"h_bucket{le="+Inf"} 3"#)
        );
        assert_eq!(move_le_last("h_sum 3.0"), None);
    }
}
