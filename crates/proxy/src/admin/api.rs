//! The admin API's endpoints: routing by path (POST for those that change the server), server
//! state (`/ready`, `/server_info`) and `/stats` in Envoy's text and JSON forms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::logging::LogLevels;
use super::server::{respond, respond_json};
use super::views::{certs_json, listeners_json};
use super::{AdminControls, AdminSource, QuitSignal, TEXT};
use crate::telemetry::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};

pub(super) struct Admin {
    pub(super) source: Arc<dyn AdminSource>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) quit: QuitSignal,
    pub(super) started: Instant,
    pub(super) controls: AdminControls,
    /// What `/logging` reports and last applied.
    pub(super) levels: std::sync::Mutex<LogLevels>,
}

/// (path, mutates server state, help text), in Envoy's help order.
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "Admin home page"),
    ("/certs", false, "print certs on machine (the mesh identity, JSON)"),
    ("/clusters", false, "upstream cluster status (?format=json)"),
    ("/config_dump", false, "dump current configuration"),
    (
        "/drain_listeners",
        true,
        "stop accepting on the data-plane listeners; open connections are served to their end, /ready and /healthz/ready answer 503",
    ),
    (
        "/healthcheck/fail",
        true,
        "cause /healthz/ready to answer 503 (traffic is not affected)",
    ),
    ("/healthcheck/ok", true, "cause /healthz/ready to answer normally again"),
    ("/help", false, "print out list of admin commands"),
    ("/listeners", false, "print listener info (?format=json)"),
    (
        "/logging",
        false,
        "list log levels (GET); POST ?level=<level> sets all, ?<logger>=<level> or ?paths=<logger>:<level>,... sets some",
    ),
    ("/quitquitquit", true, "exit the server"),
    (
        "/ready",
        false,
        "print server state, return 200 if LIVE, otherwise return 503",
    ),
    (
        "/server_info",
        false,
        "print server version/status information",
    ),
    (
        "/stats",
        false,
        "print server stats (?format=json|prometheus, ?filter=<regex>, ?usedonly)",
    ),
    (
        "/stats/prometheus",
        false,
        "print server stats in prometheus format",
    ),
];

impl Admin {
    pub(super) fn handle(&self, parts: &Parts) -> Response<Full<Bytes>> {
        let path = parts.uri.path();
        let query = parse_query(parts.uri.query());
        let Some(&(_, mutates, _)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
            let mut body = String::from("invalid path. admin commands are:\n");
            body.push_str(&help_text());
            return respond(StatusCode::NOT_FOUND, TEXT, body);
        };
        if mutates && parts.method != Method::POST {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("Method {} not allowed, POST required.\n", parts.method),
            );
        }
        match path {
            "/" | "/help" => respond(StatusCode::OK, TEXT, help_text()),
            "/ready" => {
                let state = self.state();
                let status = if state == "LIVE" {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                respond(status, TEXT, format!("{state}\n"))
            }
            "/server_info" => {
                let uptime = format!("{}s", self.started.elapsed().as_secs());
                respond_json(&serde_json::json!({
                    "version": format!("sluice/{}", self.metrics.build_tag()),
                    "state": self.state(),
                    "hot_restart_version": "disabled",
                    // Envoy's `--concurrency`: the data-plane worker threads actually running.
                    "command_line_options": {
                        "concurrency": tokio::runtime::Handle::try_current()
                            .map_or(0, |h| h.metrics().num_workers()),
                    },
                    "uptime_current_epoch": uptime,
                    "uptime_all_epochs": uptime,
                }))
            }
            "/config_dump" => respond_json(&self.source.config_dump()),
            "/clusters" => {
                if query.get("format").map(String::as_str) == Some("json") {
                    respond_json(&self.source.clusters_json())
                } else {
                    respond(StatusCode::OK, TEXT, self.source.clusters_text())
                }
            }
            "/listeners" => {
                let text = self.source.listeners_text();
                if query.get("format").map(String::as_str) == Some("json") {
                    respond_json(&listeners_json(&text))
                } else {
                    respond(StatusCode::OK, TEXT, text)
                }
            }
            "/stats/prometheus" => self.prometheus(),
            "/stats" => self.stats(&query),
            "/quitquitquit" => {
                self.quit.trigger();
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/drain_listeners" => {
                if !self.controls.drain.is_triggered() {
                    tracing::info!("draining listeners (POST /drain_listeners)");
                }
                self.controls.drain.trigger();
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/healthcheck/fail" => {
                self.controls.health.set_failing(true);
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/healthcheck/ok" => {
                self.controls.health.set_failing(false);
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/logging" => self.logging(parts, &query),
            "/certs" => respond_json(&certs_json(self.controls.identity.as_deref())),
            _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }

    /// Envoy's server state names.
    fn state(&self) -> &'static str {
        if self.quit.is_triggered() || self.controls.drain.is_triggered() {
            "DRAINING"
        } else if self.source.is_ready() {
            "LIVE"
        } else {
            "INITIALIZING"
        }
    }

    fn prometheus(&self) -> Response<Full<Bytes>> {
        respond(
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            self.metrics.encode(),
        )
    }

    fn stats(&self, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let format = query.get("format").map(String::as_str).unwrap_or("text");
        if format == "prometheus" {
            return self.prometheus();
        }
        let filter = match query.get("filter").filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => match regex::Regex::new(f) {
                Ok(re) => Some(re),
                Err(e) => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        TEXT,
                        format!("Invalid re2 regex {f:?}: {e}\n"),
                    )
                }
            },
        };
        let used_only = query.contains_key("usedonly");
        let encoded = self.metrics.encode();
        let stats = stat_samples(&encoded).filter(|(name, value)| {
            filter.as_ref().is_none_or(|re| re.is_match(name))
                && !(used_only && value.parse::<f64>().is_ok_and(|v| v == 0.0))
        });
        match format {
            "json" => {
                let list: Vec<serde_json::Value> = stats
                    .map(|(name, value)| {
                        let value = value
                            .parse::<u64>()
                            .map(serde_json::Value::from)
                            .or_else(|_| value.parse::<f64>().map(serde_json::Value::from))
                            .unwrap_or_else(|_| serde_json::Value::from(value));
                        serde_json::json!({ "name": name, "value": value })
                    })
                    .collect();
                respond_json(&serde_json::json!({ "stats": list }))
            }
            "text" => {
                let mut body = String::with_capacity(encoded.len());
                for (name, value) in stats {
                    body.push_str(name);
                    body.push_str(": ");
                    body.push_str(value);
                    body.push('\n');
                }
                respond(StatusCode::OK, TEXT, body)
            }
            other => respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("usage: /stats?format=(text|json|prometheus); unknown format {other:?}\n"),
            ),
        }
    }
}

fn help_text() -> String {
    let mut s = String::from("admin commands are:\n");
    for (path, _, help) in ENDPOINTS {
        s.push_str("  ");
        s.push_str(path);
        s.push_str(": ");
        s.push_str(help);
        s.push('\n');
    }
    s
}

/// `(series, value)` pairs of a Prometheus exposition, skipping comments and histogram buckets (which
/// `/stats` in Envoy summarizes rather than lists).
fn stat_samples(encoded: &str) -> impl Iterator<Item = (&str, &str)> {
    encoded.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let name_end = series.find('{').unwrap_or(series.len());
        if series[..name_end].ends_with("_bucket") {
            return None;
        }
        Some((series, value))
    })
}

/// Parses `a=1&b&c=x%20y` into a map (last value wins; keys without `=` map to "").
fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k), percent_decode(v));
    }
    map
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some(
            "format=json&usedonly&filter=istio_%5Brt%5D+x&bad=%zz&end=%4",
        ));
        assert_eq!(q["format"], "json");
        assert_eq!(q["usedonly"], "");
        assert_eq!(q["filter"], "istio_[rt] x");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
