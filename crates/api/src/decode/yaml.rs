//! YAML text → JSON values plus the line of every field.
//!
//! Decoding goes through `serde_json::Value` because the typed structs are plain serde structs and
//! `serde_path_to_error` reports failures as a path; keeping a path → line table next to the value
//! turns every such path back into a line of the user's file.

mod limits;

use std::collections::BTreeMap;

use saphyr::{MarkedYaml, Scalar, ScanError, YamlData, YamlLoader};
use saphyr_parser::{Event, Parser, SpannedEventReceiver};
use serde_json::{Map, Number, Value};

pub use limits::{MAX_ALIAS_NODES, MAX_DEPTH, MAX_OBJECT_BYTES, MAX_TEXT_BYTES};

/// Field path (`spec.http[0].timeout`) → 1-based line.
pub type Positions = BTreeMap<String, u32>;

/// The entries of `positions` whose paths start with `prefix`, found without looking at the
/// others (a scan of the whole table per list item or per route made decoding quadratic).
pub(crate) fn positions_under<'p>(
    positions: &'p Positions,
    prefix: &'p str,
) -> impl Iterator<Item = (&'p String, &'p u32)> + 'p {
    positions
        .range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(move |(path, _)| path.starts_with(prefix))
        .inspect(|_| crate::work::count(1))
}

/// One YAML document, converted.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    /// Paths relative to the document root.
    pub positions: Positions,
    /// Line of the document's first key (or of the node when it is not a mapping).
    pub line: u32,
}

/// A problem that makes the text unreadable as YAML, or unrepresentable as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub line: u32,
    pub message: String,
}

/// Parses every document of `text`, skipping empty ones (`---` with nothing after it).
///
/// A syntax error anywhere fails the whole text: the parser cannot tell where the broken document
/// ends, so documents after it cannot be trusted, and a half-read file is worse than a reported one.
/// So does a text beyond the bounds of [`limits`] (nesting depth, size, alias expansion).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut paths = PathBudget::for_text(text);
    load(text, |node| {
        if is_empty_document(&node) {
            return Ok(());
        }
        let mut positions = Positions::new();
        let value = convert(&node, &mut positions, &mut paths)?;
        let line = first_key_line(&node);
        add_camel_case_aliases(&mut positions);
        docs.push(Document {
            value,
            positions,
            line,
        });
        Ok(())
    })?;
    Ok(docs)
}

/// Loads the documents of `text` one at a time, feeding saphyr's loader one parser event at a
/// time after [`limits::Limits`] has checked it, and hands each finished document to `each`.
/// (saphyr's own `load_from_str` drives the loader with a recursive descent, which is what
/// overflowed the stack on deeply nested input.) One document's node tree is held at a time:
/// a tree costs tens of bytes per byte of text, and a file of thousands of resources made the
/// proxy's memory peak at dozens of MiB while it loaded.
fn load<'a>(
    text: &'a str,
    mut each: impl FnMut(MarkedYaml<'a>) -> Result<(), YamlError>,
) -> Result<(), YamlError> {
    let mut limits = limits::Limits::new(text)?;
    let mut loader: YamlLoader<'a, MarkedYaml<'a>> = YamlLoader::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| scan_error(&e))?;
        limits.check(&event, span)?;
        let document_end = matches!(event, Event::DocumentEnd);
        loader.on_event(event, span);
        if let Some(e) = loader.error() {
            return Err(scan_error(e));
        }
        if document_end {
            // Anchors are scoped to their document, so a fresh loader loses nothing.
            for node in std::mem::take(&mut loader).into_documents() {
                each(node)?;
            }
        }
    }
    for node in loader.into_documents() {
        each(node)?;
    }
    Ok(())
}

fn scan_error(e: &ScanError) -> YamlError {
    YamlError {
        line: to_line(e.marker().line()),
        message: format!(
            "invalid YAML: {} (column {})",
            e.info(),
            e.marker().col() + 1
        ),
    }
}

/// Bounds the bytes of field paths recorded for one text. Each node's path repeats all of its
/// ancestors' keys, so a deep document with long keys and many leaves would otherwise make the
/// position table hundreds of times larger than the text. Real documents use about one byte of
/// paths per byte of text, the `kind: List`s that `kubectl get -o yaml` prints up to about
/// twenty (every path repeats `items[N].`); the bound leaves a margin above that.
struct PathBudget {
    left: usize,
}

impl PathBudget {
    const PER_TEXT_BYTE: usize = 32;
    const BASE: usize = 1024 * 1024;

    fn for_text(text: &str) -> Self {
        PathBudget {
            left: text
                .len()
                .saturating_mul(Self::PER_TEXT_BYTE)
                .saturating_add(Self::BASE),
        }
    }

    fn take(&mut self, path: &str, line: u32) -> Result<(), YamlError> {
        match self.left.checked_sub(path.len()) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(YamlError {
                line,
                message: "document has too many deeply nested fields with long names: its \
                          field paths would take more than 32 times the size of the text"
                    .to_string(),
            }),
        }
    }
}

fn to_line(line: usize) -> u32 {
    u32::try_from(line.max(1)).unwrap_or(u32::MAX)
}

fn is_empty_document(node: &MarkedYaml<'_>) -> bool {
    matches!(
        node.data,
        YamlData::BadValue | YamlData::Value(Scalar::Null)
    )
}

fn first_key_line(node: &MarkedYaml<'_>) -> u32 {
    match &node.data {
        YamlData::Mapping(map) => map
            .iter()
            .next()
            .map_or(to_line(node.span.start.line()), |(k, _)| {
                to_line(k.span.start.line())
            }),
        YamlData::Tagged(_, inner) => first_key_line(inner),
        _ => to_line(node.span.start.line()),
    }
}

/// Joins a parent path and a map key the way paths are written everywhere: `a.b`, `a[0].b`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A collection being converted: its children are converted one at a time on an explicit stack,
/// so nesting costs heap, not call stack (a recursive version took 4 KiB of stack per level).
enum Frame<'a, 'y> {
    Sequence {
        items: &'a [MarkedYaml<'y>],
        path: String,
        out: Vec<Value>,
    },
    Mapping {
        entries: Vec<(&'a MarkedYaml<'y>, &'a MarkedYaml<'y>)>,
        /// Next entry to convert; past the entries, the next merge source.
        next: usize,
        path: String,
        out: Map<String, Value>,
        /// The key of the value being converted.
        key: Option<String>,
        /// `<<: *anchor` merge keys (YAML 1.1, which Kubernetes' decoder speaks): explicit keys
        /// win over merged ones, so merges are applied after the explicit keys.
        merges: Vec<&'a MarkedYaml<'y>>,
        merging: Option<usize>,
    },
}

/// What a frame asks for next.
enum Step<'a, 'y> {
    Child(&'a MarkedYaml<'y>, String),
    Done(Value),
}

impl<'a, 'y> Frame<'a, 'y> {
    /// The frame for a collection, or the value of a scalar.
    fn open(
        node: &'a MarkedYaml<'y>,
        path: String,
    ) -> Result<Result<Frame<'a, 'y>, Value>, YamlError> {
        let mut node = node;
        while let YamlData::Tagged(_, inner) = &node.data {
            node = inner;
        }
        Ok(match &node.data {
            YamlData::Value(scalar) => Err(scalar_to_json(scalar)),
            YamlData::Representation(text, style, tag) => {
                // Only produced when early parsing is off; resolve it the same way the loader would.
                match Scalar::parse_from_cow_and_metadata(text.clone(), *style, tag.as_ref()) {
                    Some(s) => Err(scalar_to_json(&s)),
                    None => return Err(bad_value(node)),
                }
            }
            YamlData::Sequence(items) => Ok(Frame::Sequence {
                items,
                out: Vec::with_capacity(items.len()),
                path,
            }),
            YamlData::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                let mut merges = Vec::new();
                for (k, v) in map.iter() {
                    if matches!(&k.data, YamlData::Value(Scalar::String(s)) if s == "<<") {
                        match &v.data {
                            YamlData::Sequence(items) => merges.extend(items.iter()),
                            _ => merges.push(v),
                        }
                    } else {
                        entries.push((k, v));
                    }
                }
                Ok(Frame::Mapping {
                    entries,
                    next: 0,
                    path,
                    out: Map::new(),
                    key: None,
                    merges,
                    merging: None,
                })
            }
            YamlData::Tagged(..) | YamlData::Alias(_) | YamlData::BadValue => {
                return Err(bad_value(node))
            }
        })
    }

    /// Takes the converted value of the child asked for last.
    fn accept(&mut self, value: Value) -> Result<(), YamlError> {
        match self {
            Frame::Sequence { out, .. } => out.push(value),
            Frame::Mapping {
                out,
                key,
                merges,
                merging,
                ..
            } => match (key.take(), *merging) {
                (Some(k), _) => {
                    out.insert(k, value);
                }
                (None, Some(i)) => {
                    let Value::Object(merged) = value else {
                        return Err(YamlError {
                            line: to_line(merges[i].span.start.line()),
                            message: "a `<<` merge key must refer to a mapping".to_string(),
                        });
                    };
                    for (k, v) in merged {
                        out.entry(k).or_insert(v);
                    }
                }
                (None, None) => {}
            },
        }
        Ok(())
    }

    /// The next child to convert (its position recorded), or the finished value.
    fn step(
        &mut self,
        positions: &mut Positions,
        budget: &mut PathBudget,
    ) -> Result<Step<'a, 'y>, YamlError> {
        match self {
            Frame::Sequence { items, path, out } => match items.get(out.len()) {
                Some(item) => {
                    let item_path = format!("{path}[{}]", out.len());
                    let line = to_line(item.span.start.line());
                    budget.take(&item_path, line)?;
                    positions.insert(item_path.clone(), line);
                    Ok(Step::Child(item, item_path))
                }
                None => Ok(Step::Done(Value::Array(std::mem::take(out)))),
            },
            Frame::Mapping {
                entries,
                next,
                path,
                out,
                key,
                merges,
                merging,
            } => {
                if let Some((k, v)) = entries.get(*next).copied() {
                    *next += 1;
                    let name = key_to_string(k)?;
                    let key_path = join(path, &name);
                    let line = to_line(k.span.start.line());
                    budget.take(&key_path, line)?;
                    positions.insert(key_path.clone(), line);
                    *key = Some(name);
                    return Ok(Step::Child(v, key_path));
                }
                // Merge sources are converted at this mapping's own path.
                let i = merging.map_or(0, |i| i + 1);
                match merges.get(i).copied() {
                    Some(source) => {
                        *merging = Some(i);
                        Ok(Step::Child(source, path.clone()))
                    }
                    None => Ok(Step::Done(Value::Object(std::mem::take(out)))),
                }
            }
        }
    }
}

fn convert(
    node: &MarkedYaml<'_>,
    positions: &mut Positions,
    budget: &mut PathBudget,
) -> Result<Value, YamlError> {
    let mut stack = Vec::new();
    let mut finished = match Frame::open(node, String::new())? {
        Ok(frame) => {
            stack.push(frame);
            None
        }
        Err(value) => return Ok(value),
    };
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(finished.unwrap_or(Value::Null));
        };
        if let Some(value) = finished.take() {
            top.accept(value)?;
        }
        match top.step(positions, budget)? {
            Step::Child(child, path) => match Frame::open(child, path)? {
                Ok(frame) => stack.push(frame),
                Err(value) => finished = Some(value),
            },
            Step::Done(value) => {
                stack.pop();
                finished = Some(value);
            }
        }
    }
}

fn bad_value(node: &MarkedYaml<'_>) -> YamlError {
    YamlError {
        line: to_line(node.span.start.line()),
        message: "invalid YAML value (a tagged scalar that does not parse as its tag, or an unknown alias)"
            .to_string(),
    }
}

fn key_to_string(key: &MarkedYaml<'_>) -> Result<String, YamlError> {
    match &key.data {
        YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
        YamlData::Value(Scalar::Null) => Ok(String::new()),
        YamlData::Value(scalar) => Ok(match scalar_to_json(scalar) {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        YamlData::Representation(text, _, _) => Ok(text.to_string()),
        YamlData::Tagged(_, inner) => key_to_string(inner),
        _ => Err(YamlError {
            line: to_line(key.span.start.line()),
            message: "mapping keys must be plain scalars (complex `? key` keys are not supported)"
                .to_string(),
        }),
    }
}

fn scalar_to_json(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number(Number::from(*i)),
        // NaN and infinities have no JSON form; keep the text so the typed decoder can say what
        // it expected instead of silently reading null.
        Scalar::FloatingPoint(f) => Number::from_f64(f.0)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.0.to_string())),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

/// Also records every path under its camelCase spelling (`sni_hosts` → `sniHosts`), so code that
/// reports on a field by its canonical name finds the line however the user spelled it.
fn add_camel_case_aliases(positions: &mut Positions) {
    let aliases: Vec<(String, u32)> = positions
        .iter()
        .filter(|(path, _)| path.contains('_'))
        .map(|(path, line)| (camel_case_path(path), *line))
        .filter(|(alias, _)| !positions.contains_key(alias))
        .collect();
    positions.extend(aliases);
}

fn camel_case_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper_next = false;
    let mut segment_start = true;
    for c in path.chars() {
        match c {
            '_' if !segment_start => upper_next = true,
            '.' | '[' | ']' => {
                out.push(c);
                upper_next = false;
                segment_start = true;
                continue;
            }
            _ if upper_next => {
                out.extend(c.to_uppercase());
                upper_next = false;
            }
            _ => out.push(c),
        }
        segment_start = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_values() {
        let docs = parse_documents(
            "# comment\napiVersion: v1\nkind: X\nspec:\n  http:\n  - timeout: 3s\n    route:\n    - destination: {host: a}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.line, 2);
        assert_eq!(d.positions["spec.http[0]"], 6);
        assert_eq!(d.positions["spec.http[0].timeout"], 6);
        assert_eq!(d.positions["spec.http[0].route[0].destination.host"], 8);
        assert_eq!(d.value["spec"]["http"][0]["timeout"], "3s");
    }

    #[test]
    fn camel_case_alias() {
        assert_eq!(
            camel_case_path("spec.tls[0].match[0].sni_hosts"),
            "spec.tls[0].match[0].sniHosts"
        );
        assert_eq!(camel_case_path("a._b"), "a._b");
    }

    #[test]
    fn merge_keys_and_empty_documents() {
        let docs =
            parse_documents("---\n---\nbase: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value["m"]["x"], 1);
        assert_eq!(docs[0].value["m"]["y"], 3);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(err.message.starts_with("invalid YAML"));
    }
}
