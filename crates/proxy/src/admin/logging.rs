//! `/logging`: sluice's log filter shown and changed as Envoy's per-logger levels.

use std::collections::HashMap;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::api::Admin;
use super::server::respond;
use super::TEXT;

impl Admin {
    /// Envoy's `/logging`: lists loggers; a POST with `level=`, `<logger>=` or `paths=` changes
    /// them and answers with the new list.
    pub(super) fn logging(
        &self,
        parts: &Parts,
        query: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if query.is_empty() {
            return respond(StatusCode::OK, TEXT, levels.render());
        }
        if parts.method != Method::POST {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("Method {} not allowed, POST required.\n", parts.method),
            );
        }
        let Some(control) = &self.controls.log else {
            return respond(
                StatusCode::NOT_IMPLEMENTED,
                TEXT,
                "this process's log filter cannot be changed\n",
            );
        };
        let mut next = levels.clone();
        if let Err(e) = next.update(query) {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("error: {e}\n{}", LogLevels::USAGE),
            );
        }
        let directives = next.directives();
        if let Err(e) = control.apply(&directives) {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("error: log filter {directives:?} refused: {e}\n"),
            );
        }
        tracing::info!("log levels changed: {directives}");
        *levels = next;
        respond(StatusCode::OK, TEXT, levels.render())
    }
}

/// Envoy's level names, and the `tracing` level each sets.
const LEVELS: &[(&str, &str)] = &[
    ("trace", "trace"),
    ("debug", "debug"),
    ("info", "info"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("error", "error"),
    ("critical", "error"),
    ("off", "off"),
];

/// Loggers `/logging` always lists: sluice's crates and the libraries whose logs matter most.
const KNOWN_LOGGERS: &[&str] = &[
    "sluice",
    "sluice_api",
    "sluice_model",
    "sluice_proxy",
    "h2",
    "hickory_resolver",
    "hyper",
    "rustls",
];

/// The log filter as levels: a default and per-logger (tracing target prefix) overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LogLevels {
    default: String,
    overrides: std::collections::BTreeMap<String, String>,
    /// Directives `/logging` does not model (span or field filters): kept as they are.
    other: Vec<String>,
}

impl LogLevels {
    const USAGE: &'static str = "usage: POST /logging?level=<level> (all loggers), /logging?<logger>=<level>, /logging?paths=<logger>:<level>,<logger>:<level>\n  levels: trace, debug, info, warning, error, critical, off\n";

    /// Reads an `EnvFilter` directive string such as `info,sluice_proxy=debug`.
    pub(super) fn parse(directives: &str) -> LogLevels {
        let mut levels = LogLevels {
            default: "info".to_string(),
            overrides: Default::default(),
            other: Vec::new(),
        };
        for d in directives
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            match d.split_once('=') {
                None if tracing_level(d).is_some() => {
                    levels.default = tracing_level(d).unwrap_or("info").to_string()
                }
                Some((target, level))
                    if is_logger_name(target) && tracing_level(level).is_some() =>
                {
                    levels.overrides.insert(
                        target.to_string(),
                        tracing_level(level).unwrap_or("info").to_string(),
                    );
                }
                _ => levels.other.push(d.to_string()),
            }
        }
        levels
    }

    /// Applies `level=`, `paths=` and `<logger>=` parameters.
    fn update(&mut self, query: &HashMap<String, String>) -> Result<(), String> {
        for (key, value) in query {
            match key.as_str() {
                "level" => {
                    let level =
                        tracing_level(value).ok_or_else(|| format!("unknown level {value:?}"))?;
                    // Envoy: every logger at this level.
                    self.default = level.to_string();
                    self.overrides.clear();
                }
                "paths" => {
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (logger, level) = pair
                            .split_once(':')
                            .ok_or_else(|| format!("{pair:?} is not <logger>:<level>"))?;
                        self.set_one(logger, level)?;
                    }
                }
                logger => self.set_one(logger, value)?,
            }
        }
        Ok(())
    }

    fn set_one(&mut self, logger: &str, level: &str) -> Result<(), String> {
        if !is_logger_name(logger) {
            return Err(format!("invalid logger name {logger:?}"));
        }
        let level = tracing_level(level).ok_or_else(|| format!("unknown level {level:?}"))?;
        self.overrides.insert(logger.to_string(), level.to_string());
        Ok(())
    }

    /// The `EnvFilter` directives for these levels.
    fn directives(&self) -> String {
        let mut d = vec![self.default.clone()];
        d.extend(self.overrides.iter().map(|(t, l)| format!("{t}={l}")));
        d.extend(self.other.iter().cloned());
        d.join(",")
    }

    /// Envoy's listing: `active loggers:` then `  <name>: <level>` (Envoy's level names).
    fn render(&self) -> String {
        let mut names: std::collections::BTreeSet<&str> = KNOWN_LOGGERS.iter().copied().collect();
        names.extend(self.overrides.keys().map(String::as_str));
        let mut out = String::from("active loggers:\n");
        out.push_str(&format!("  default: {}\n", envoy_level(&self.default)));
        for name in names {
            let level = self.overrides.get(name).unwrap_or(&self.default);
            out.push_str(&format!("  {name}: {}\n", envoy_level(level)));
        }
        out
    }
}

/// The `tracing` level for an Envoy or tracing level name.
fn tracing_level(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    LEVELS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn envoy_level(tracing: &str) -> &str {
    if tracing == "warn" {
        "warning"
    } else {
        tracing
    }
}

/// A tracing target: a Rust path such as `sluice_proxy` or `sluice_proxy::http_proxy`.
fn is_logger_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_parse_update_and_render() {
        let mut l = LogLevels::parse("info,sluice_proxy=debug,hyper[conn]=trace");
        assert_eq!(l.default, "info");
        assert_eq!(l.overrides["sluice_proxy"], "debug");
        assert_eq!(l.other, vec!["hyper[conn]=trace".to_string()]);
        let mut q = HashMap::new();
        q.insert("sluice_model".to_string(), "warning".to_string());
        l.update(&q).unwrap();
        assert_eq!(
            l.directives(),
            "info,sluice_model=warn,sluice_proxy=debug,hyper[conn]=trace"
        );
        let out = l.render();
        assert!(
            out.starts_with("active loggers:\n  default: info\n"),
            "{out}"
        );
        assert!(out.contains("  sluice_model: warning\n"), "{out}");
        assert!(out.contains("  hyper: info\n"), "{out}");

        let mut q = HashMap::new();
        q.insert("level".to_string(), "critical".to_string());
        l.update(&q).unwrap();
        assert_eq!(l.directives(), "error,hyper[conn]=trace");

        let mut q = HashMap::new();
        q.insert("paths".to_string(), "a:debug,b:trace".to_string());
        l.update(&q).unwrap();
        assert_eq!(l.overrides["a"], "debug");
        assert_eq!(l.overrides["b"], "trace");

        for (k, v) in [
            ("level", "loud"),
            ("paths", "nocolon"),
            ("bad name", "info"),
        ] {
            let mut q = HashMap::new();
            q.insert(k.to_string(), v.to_string());
            assert!(l.clone().update(&q).is_err(), "{k}={v}");
        }
    }
}
