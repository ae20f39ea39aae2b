//! CEL expressions of the Telemetry API (`accessLogging[].filter.expression`,
//! `metrics[].overrides[].tagOverrides.*.value`), compiled with the `cel` crate.
//!
//! Validation compiles every expression once, so what a proxy is handed always compiles; the
//! compiled program is kept with its source text and shared (`Arc`) by every snapshot that uses
//! it. Evaluation belongs to the data path, which builds Envoy's attributes
//! (`request.headers`, `response.code`, `connection.mtls`, …) for it.

use std::fmt;
use std::sync::Arc;

/// The attribute roots Envoy evaluates CEL against (Envoy's "Attributes" reference, and the
/// peers Istio's metadata exchange adds). An expression naming another root fails at run time
/// in Envoy (and in sluice): validation warns.
pub const ENVOY_ATTRIBUTE_ROOTS: [&str; 14] = [
    "request",
    "response",
    "connection",
    "upstream",
    "source",
    "destination",
    "metadata",
    "filter_state",
    "xds",
    "node",
    "upstream_filter_state",
    "route_name",
    "upstream_peer",
    "downstream_peer",
];

/// Longest expression accepted: a filter is a line of config, and the parser is recursive.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// A compiled CEL expression and the text it came from.
#[derive(Clone)]
pub struct CelExpression {
    source: Arc<str>,
    program: Arc<cel::Program>,
}

impl CelExpression {
    /// Compiles `source`; the error is the parser's message, for a diagnostic on the field.
    pub fn compile(source: &str) -> Result<CelExpression, String> {
        if source.trim().is_empty() {
            return Err("expression is empty".into());
        }
        if source.len() > MAX_EXPRESSION_LEN {
            return Err(format!(
                "expression is {} bytes long; at most {MAX_EXPRESSION_LEN} are accepted",
                source.len()
            ));
        }
        // The parser is third-party code fed with user input: a panic there must be a refused
        // expression, not a dead control thread.
        let compiled = std::panic::catch_unwind(|| cel::Program::compile(source))
            .map_err(|_| "expression could not be parsed".to_string())?;
        let program = compiled.map_err(|e| one_line(&e.to_string()))?;
        Ok(CelExpression {
            source: Arc::from(source),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled program, for evaluation.
    pub fn program(&self) -> &cel::Program {
        &self.program
    }

    /// The variables the expression reads that are not Envoy attributes (`respons.code`).
    pub fn unknown_roots(&self) -> Vec<String> {
        let references = self.program.references();
        let mut unknown: Vec<String> = references
            .variables()
            .into_iter()
            .filter(|v| !ENVOY_ATTRIBUTE_ROOTS.contains(v))
            .map(str::to_string)
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }
}

impl PartialEq for CelExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for CelExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CelExpression({:?})", &*self.source)
    }
}

impl serde::Serialize for CelExpression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// The parser's report (`ERROR: <input>:1:22: Syntax error: missing ')' at '<EOF>'`, then the
/// source and a caret) as one diagnostic line: `column 22: syntax error: missing ')' at '<EOF>'`.
fn one_line(message: &str) -> String {
    let first = message.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(first) = first else {
        return "expression could not be parsed".into();
    };
    let located = first
        .strip_prefix("ERROR: <input>:")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(position, what)| {
            let (_, column) = position.split_once(':')?;
            Some(format!("column {column}: {}", lower_first(what)))
        });
    located.unwrap_or_else(|| first.to_string())
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_lowercase().chain(chars).collect::<String>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_envoy_style_filters() {
        for ok in [
            "response.code >= 400",
            "request.headers['x-debug'] == 'on'",
            "connection.mtls && request.method == 'GET'",
            "response.flags != 0 || response.duration > duration('1s')",
        ] {
            let e = CelExpression::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(e.source(), ok);
            assert!(e.unknown_roots().is_empty(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_does_not_parse() {
        for bad in [
            "",
            "   ",
            "response.code >=",
            "request.headers['x'",
            "a ==== b",
        ] {
            assert!(CelExpression::compile(bad).is_err(), "{bad:?} compiled");
        }
        assert_eq!(
            CelExpression::compile("response.code >= (400").unwrap_err(),
            "column 22: syntax error: missing ')' at '<EOF>'"
        );
        let long = "1 + ".repeat(2000) + "1";
        assert!(CelExpression::compile(&long)
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn names_unknown_attribute_roots() {
        let e = CelExpression::compile("respons.code == 200 && request.size > 0").unwrap();
        assert_eq!(e.unknown_roots(), ["respons"]);
    }
}
