//! A small reader for the Prometheus text format, enough to assert on Istio's metrics.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition; comment lines and unparsable lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        loop {
            // label name
            while matches!(chars.peek(), Some((_, ' ' | ','))) {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    val.push(match c {
                        'n' => '\n',
                        other => other,
                    });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    break;
                } else {
                    val.push(c);
                }
            }
            labels.insert(key.trim().to_string(), val);
        }
        rest = &r[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of all samples of `name` whose labels include every pair in `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    matching(samples, name, want).map(|s| s.value).sum()
}

/// Samples of `name` whose labels include every pair in `want`.
pub fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    want: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# HELP istio_requests_total x\n# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"source\",destination_service_name=\"httpbin.org\",response_code=\"200\"} 3\n\
            istio_requests_total{reporter=\"source\",destination_service_name=\"BlackHoleCluster\",response_code=\"502\"} 1 1700000000\n\
            istio_build{component=\"proxy\",tag=\"a\\\"b\"} 1\nup 1\n";
        let s = parse(text);
        assert_eq!(s.len(), 4);
        assert_eq!(
            sum(
                &s,
                "istio_requests_total",
                &[("destination_service_name", "httpbin.org")]
            ),
            3.0
        );
        assert_eq!(
            sum(&s, "istio_requests_total", &[("response_code", "502")]),
            1.0
        );
        assert_eq!(sum(&s, "istio_requests_total", &[]), 4.0);
        assert_eq!(s[2].labels["tag"], "a\"b");
        assert_eq!(s[3].name, "up");
    }
}
