//! `sluice suggest`: the ServiceEntries that would allow what running proxies blocked.
//!
//! Reads `sluice_egress_blocked_total{source_workload, destination_host, port, protocol}` from
//! each proxy's `/stats/prometheus` and prints, per blocked host, a ServiceEntry with the ports
//! and protocols that were asked for, and a comment naming the workloads that asked.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

use crate::http_get;

/// The counter read from the proxies.
pub const BLOCKED_METRIC: &str = "sluice_egress_blocked_total";

/// The `destination_host` a proxy counts new hosts under once it keeps too many series.
pub const FOLDED_HOST: &str = "other";

/// Options of `sluice suggest`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Reads the counter sluice_egress_blocked_total from each proxy and prints one ServiceEntry per
blocked host (hosts: DNS resolution; IP addresses: resolution NONE with addresses). Review them
before applying: everything that was blocked is suggested.

Examples:
  sluice suggest                                   # 127.0.0.1:15090
  sluice suggest --admin 10.0.0.5:15090 --admin 10.0.0.6:15090
  sluice suggest --stats http://127.0.0.1:15090/stats/prometheus > allow.yaml")]
pub struct SuggestArgs {
    /// A proxy's stats port, HOST:PORT; /stats/prometheus is read (repeatable).
    #[arg(long = "admin", value_name = "HOST:PORT")]
    pub admin: Vec<String>,
    /// A full metrics URL, http://host:port/path (repeatable).
    #[arg(long = "stats", value_name = "URL")]
    pub stats: Vec<String>,
}

/// One sample of the blocked counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub source_workload: String,
    pub destination_host: String,
    pub port: u16,
    /// `http`, `tls` or `tcp`.
    pub protocol: String,
    pub count: f64,
}

/// Parses a Prometheus label set `a="x",b="y"` (with `\"`, `\\`, `\n` escapes).
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        chars.next(); // '='
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// Every sample of [`BLOCKED_METRIC`] in a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Vec<Blocked> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(BLOCKED_METRIC) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some(end) = rest.rfind('}') else {
            continue;
        };
        let Some(labels) = parse_labels(&rest[..end]) else {
            continue;
        };
        let Some(count) = rest[end + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let Ok(port) = get("port").parse::<u16>() else {
            continue;
        };
        let host = get("destination_host");
        if host.is_empty() || count <= 0.0 {
            continue;
        }
        out.push(Blocked {
            source_workload: get("source_workload"),
            destination_host: host.to_ascii_lowercase(),
            port,
            protocol: get("protocol").to_ascii_lowercase(),
            count,
        });
    }
    out
}

/// What was blocked for one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSuggestion {
    /// (port, protocol) pairs asked for.
    pub ports: BTreeMap<u16, String>,
    /// Workload → requests blocked.
    pub workloads: BTreeMap<String, f64>,
}

/// Groups samples by host; a port asked for with several protocols keeps the most specific one
/// (HTTP over TLS over TCP), since one ServiceEntry port has one protocol.
pub fn group(samples: &[Blocked]) -> BTreeMap<String, HostSuggestion> {
    let rank = |p: &str| match p {
        "http" => 0,
        "tls" => 1,
        _ => 2,
    };
    let mut out: BTreeMap<String, HostSuggestion> = BTreeMap::new();
    for s in samples {
        let entry = out.entry(s.destination_host.clone()).or_default();
        let proto = entry
            .ports
            .entry(s.port)
            .or_insert_with(|| s.protocol.clone());
        if rank(&s.protocol) < rank(proto) {
            *proto = s.protocol.clone();
        }
        let who = if s.source_workload.is_empty() {
            "unknown".to_string()
        } else {
            s.source_workload.clone()
        };
        *entry.workloads.entry(who).or_insert(0.0) += s.count;
    }
    out
}

/// A resource name from a host: `api.example.com` → `api-example-com`, `10.0.0.1` → `ip-10-0-0-1`.
pub fn name_for(host: &str) -> String {
    let mut name = String::new();
    for c in host.to_ascii_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-');
    let name = if host.parse::<IpAddr>().is_ok() || name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("ip-{name}")
    } else {
        name.to_string()
    };
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        "egress".into()
    } else {
        name
    }
}

fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The ServiceEntry YAML that allows `host` on the ports it was blocked on.
pub fn render_service_entry(host: &str, s: &HostSuggestion) -> String {
    let ip = host.parse::<IpAddr>().ok();
    let asked: Vec<String> = s
        .workloads
        .iter()
        .map(|(w, n)| format!("{w} ({})", count(*n)))
        .collect();
    let mut y = String::new();
    y.push_str(&format!(
        "# blocked for: {} (connections/requests)\n",
        asked.join(", ")
    ));
    y.push_str("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n");
    y.push_str(&format!("  name: {}\nspec:\n", name_for(host)));
    // A ServiceEntry host must be a DNS name; for an address the name is only a label (routing
    // is by `addresses`), so one is made up from it.
    let host_name = if ip.is_some() {
        format!("{}.external", name_for(host))
    } else {
        host.to_string()
    };
    y.push_str(&format!("  hosts:\n  - {host_name:?}\n"));
    if let Some(ip) = ip {
        y.push_str(&format!("  addresses:\n  - {:?}\n", ip.to_string()));
    }
    y.push_str("  location: MESH_EXTERNAL\n  ports:\n");
    for (port, proto) in &s.ports {
        let upper = match proto.as_str() {
            "http" => "HTTP",
            "tls" => "TLS",
            _ => "TCP",
        };
        y.push_str(&format!(
            "  - number: {port}\n    name: {}-{port}\n    protocol: {upper}\n",
            upper.to_ascii_lowercase()
        ));
    }
    y.push_str(if ip.is_some() {
        "  resolution: NONE\n"
    } else {
        "  resolution: DNS\n"
    });
    y
}

/// Every suggestion, as one multi-document YAML.
pub fn render_all(groups: &BTreeMap<String, HostSuggestion>) -> String {
    groups
        .iter()
        .map(|(h, s)| render_service_entry(h, s))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The metrics URLs for the arguments: `--stats` as given, `--admin` with /stats/prometheus, or
/// 127.0.0.1:15090 when neither is given.
pub fn urls(args: &SuggestArgs) -> Vec<String> {
    let mut out: Vec<String> = args
        .admin
        .iter()
        .map(|a| format!("http://{a}/stats/prometheus"))
        .collect();
    out.extend(args.stats.iter().cloned());
    if out.is_empty() {
        out.push("http://127.0.0.1:15090/stats/prometheus".into());
    }
    out
}

/// GETs `url` (plain HTTP) and returns the body.
pub fn fetch(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/stats/prometheus"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    let raw = http_get::exchange(&addr, &request).map_err(|(_, e)| format!("{url}: {e}"))?;
    let (status, body) =
        http_get::parse_response(&raw).map_err(|_| format!("{url}: malformed HTTP response"))?;
    if status != 200 {
        return Err(format!("{url}: {}", http_get::status_line(&raw)));
    }
    Ok(body)
}

/// Prints the suggestions; 1 if no proxy could be read.
pub fn run(args: &SuggestArgs) -> i32 {
    let mut samples = Vec::new();
    let mut read = 0;
    for url in urls(args) {
        match fetch(&url) {
            Ok(text) => {
                read += 1;
                samples.extend(parse_metrics(&text));
            }
            Err(e) => eprintln!("sluice suggest: {e}"),
        }
    }
    if read == 0 {
        return 1;
    }
    // Past its series limit the proxy folds new hosts into "other", which names no host.
    let folded: f64 = samples
        .iter()
        .filter(|s| s.destination_host == FOLDED_HOST)
        .map(|s| s.count)
        .sum();
    if folded > 0.0 {
        eprintln!(
            "sluice suggest: {} blocked calls were counted under destination_host=\"{FOLDED_HOST}\" (the proxy's series limit); their hosts are unknown",
            count(folded)
        );
    }
    samples.retain(|s| s.destination_host != FOLDED_HOST);
    let groups = group(&samples);
    if groups.is_empty() {
        eprintln!("sluice suggest: nothing was blocked ({BLOCKED_METRIC} is zero or absent)");
        return 0;
    }
    print!("{}", render_all(&groups));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP sluice_egress_blocked_total Connections and requests refused by outboundTrafficPolicy REGISTRY_ONLY.
# TYPE sluice_egress_blocked_total counter
sluice_egress_blocked_total{source_workload="sleep",destination_host="httpbin.org",port="80",protocol="http"} 3
sluice_egress_blocked_total{source_workload="curl",destination_host="httpbin.org",port="80",protocol="http"} 1
sluice_egress_blocked_total{source_workload="sleep",destination_host="httpbin.org",port="443",protocol="tls"} 2
sluice_egress_blocked_total{source_workload="db-client",destination_host="10.1.2.3",port="5432",protocol="tcp"} 7
sluice_egress_blocked_total{source_workload="x",destination_host="zero.example.com",port="80",protocol="http"} 0
istio_requests_total{reporter="source"} 5
"#;

    #[test]
    fn parses_blocked_samples_and_skips_other_metrics() {
        let s = parse_metrics(METRICS);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Blocked {
                source_workload: "sleep".into(),
                destination_host: "httpbin.org".into(),
                port: 80,
                protocol: "http".into(),
                count: 3.0
            }
        );
        assert_eq!(s[3].destination_host, "10.1.2.3");
    }

    #[test]
    fn labels_with_escapes() {
        let l = parse_labels(r#"a="x\"y",b="c,d""#).unwrap();
        assert_eq!(l["a"], "x\"y");
        assert_eq!(l["b"], "c,d");
    }

    #[test]
    fn renders_valid_service_entries() {
        let groups = group(&parse_metrics(METRICS));
        let yaml = render_all(&groups);
        assert!(
            yaml.contains("# blocked for: curl (1), sleep (5)"),
            "{yaml}"
        );
        assert!(yaml.contains("  name: httpbin-org\n"), "{yaml}");
        assert!(yaml.contains("  - number: 443\n    name: tls-443\n    protocol: TLS\n"));
        assert!(yaml.contains("  name: ip-10-1-2-3\n"), "{yaml}");
        assert!(yaml.contains("  resolution: NONE\n"), "{yaml}");
        let loaded = sluice_api::decode_str(std::path::Path::new("suggest.yaml"), &yaml);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.resources.len(), 2);
        for r in &loaded.resources {
            let d = sluice_api::validate(r);
            assert!(d.is_empty(), "{yaml}\n{d:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(name_for("API.Example.com"), "api-example-com");
        assert_eq!(name_for("10.0.0.1"), "ip-10-0-0-1");
        assert_eq!(name_for("*.example.com"), "example-com");
    }
}
