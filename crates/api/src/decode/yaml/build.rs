//! Parser events → one document's JSON value and the line of every field, in one pass.
//!
//! Nothing but the JSON value is built: collections are completed on an explicit stack (so
//! nesting costs heap, not call stack), scalars are resolved as Kubernetes resolves them
//! ([`resolve`]), and the line of every mapping key and sequence item goes into a path → line
//! table as it is met. An anchored node keeps a copy of its value and of its lines (relative to
//! itself) for its aliases.
//!
//! Mappings follow go-yaml v2 as `sigs.k8s.io/yaml` uses it: a key written twice is an error
//! (as istioctl's strict decoding and the API server's strict field validation report it);
//! `<<` merges a mapping (or a list of them, earlier ones winning) where it is written, so keys
//! written after it override merged ones and merged ones override keys written before it.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, ScalarStyle, Span, Tag};
use serde_json::{Map, Value};

use super::resolve::{self, Resolved};
use super::{add_camel_case_aliases, join, positions_under, to_line, Document, PathBudget};
use super::{Positions, YamlError};

/// Builds one document from its events.
pub(super) struct Builder<'b> {
    budget: &'b mut PathBudget,
    /// Added to every line: the line before the document's first in the whole file.
    line_offset: u32,
    stack: Vec<Open>,
    positions: Positions,
    /// Anchored values, for their aliases.
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    root_line: u32,
    first_key_line: Option<u32>,
}

/// A collection being built.
struct Open {
    path: String,
    anchor: usize,
    node: Node,
}

enum Node {
    Sequence(Vec<Value>),
    Mapping {
        map: Map<String, Value>,
        /// The key whose value comes next.
        key: Option<Key>,
        /// Keys written in this mapping (not merged into it), with their lines.
        written: HashMap<String, u32>,
    },
}

struct Key {
    name: String,
    merge: bool,
    line: u32,
}

/// Where the next node goes.
enum Slot {
    Root,
    Key,
    /// A sequence item or a mapping value, at this path.
    Child(String),
}

fn error(line: u32, message: impl Into<String>) -> YamlError {
    YamlError {
        line,
        message: message.into(),
    }
}

impl<'b> Builder<'b> {
    pub(super) fn new(budget: &'b mut PathBudget, line_offset: u32) -> Self {
        Builder {
            budget,
            line_offset,
            stack: Vec::new(),
            positions: Positions::new(),
            anchors: HashMap::new(),
            root: None,
            root_line: 0,
            first_key_line: None,
        }
    }

    /// True once the document's root node is complete.
    pub(super) fn has_root(&self) -> bool {
        self.root.is_some()
    }

    /// The document, or `None` for an empty one (nothing, or a null).
    pub(super) fn finish(self) -> Option<Document> {
        let value = self.root.filter(|v| !v.is_null())?;
        let mut positions = self.positions;
        add_camel_case_aliases(&mut positions);
        Some(Document {
            value,
            positions,
            line: self.first_key_line.unwrap_or(self.root_line),
        })
    }

    pub(super) fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let line = to_line(span.start.line()).saturating_add(self.line_offset);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.scalar(text, style, anchor, tag.as_deref(), line)
            }
            Event::SequenceStart(anchor, _) => self.start(Node::Sequence(Vec::new()), anchor, line),
            Event::MappingStart(anchor, _) => self.start(
                Node::Mapping {
                    map: Map::new(),
                    key: None,
                    written: HashMap::new(),
                },
                anchor,
                line,
            ),
            Event::SequenceEnd | Event::MappingEnd => self.end(),
            Event::Alias(id) => self.alias(id, line),
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => Ok(()),
        }
    }

    /// Where the next node goes; a sequence item's line is recorded here.
    fn slot(&mut self, line: u32) -> Result<Slot, YamlError> {
        let Some(top) = self.stack.last() else {
            self.root_line = line;
            return Ok(Slot::Root);
        };
        match &top.node {
            Node::Sequence(items) => {
                let path = format!("{}[{}]", top.path, items.len());
                self.budget.take(&path, line)?;
                self.positions.insert(path.clone(), line);
                Ok(Slot::Child(path))
            }
            Node::Mapping { key: None, .. } => Ok(Slot::Key),
            Node::Mapping { key: Some(k), .. } => Ok(Slot::Child(join(&top.path, &k.name))),
        }
    }

    fn scalar(
        &mut self,
        text: Cow<'_, str>,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        line: u32,
    ) -> Result<(), YamlError> {
        match self.slot(line)? {
            Slot::Key => {
                let merge = resolve::is_merge_key(&text, style, tag);
                let name = if merge {
                    "<<".to_string()
                } else {
                    resolve::resolve(text, style, tag)
                        .and_then(Resolved::into_key)
                        .map_err(|m| error(line, m))?
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, Value::String(name.clone()));
                }
                self.set_key(name, merge, line)
            }
            slot => {
                let value = resolve::resolve(text, style, tag)
                    .and_then(Resolved::into_value)
                    .map_err(|m| error(line, m))?;
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.attach(slot, value)
            }
        }
    }

    fn set_key(&mut self, name: String, merge: bool, line: u32) -> Result<(), YamlError> {
        let depth = self.stack.len();
        let Some(Open {
            path,
            node: Node::Mapping { key, written, .. },
            ..
        }) = self.stack.last_mut()
        else {
            return Ok(());
        };
        if depth == 1 && self.first_key_line.is_none() {
            self.first_key_line = Some(line);
        }
        if !merge {
            if let Some(first) = written.get(&name) {
                return Err(error(
                    line,
                    format!("mapping key {name:?} already defined at line {first}"),
                ));
            }
            written.insert(name.clone(), line);
            let key_path = join(path, &name);
            self.budget.take(&key_path, line)?;
            self.positions.insert(key_path, line);
        }
        *key = Some(Key { name, merge, line });
        Ok(())
    }

    fn start(&mut self, node: Node, anchor: usize, line: u32) -> Result<(), YamlError> {
        let path =
            match self.slot(line)? {
                Slot::Key => return Err(error(
                    line,
                    "mapping keys must be scalars (a list or mapping as a key has no JSON form)",
                )),
                Slot::Root => String::new(),
                Slot::Child(path) => path,
            };
        self.stack.push(Open { path, anchor, node });
        Ok(())
    }

    fn end(&mut self) -> Result<(), YamlError> {
        let Some(open) = self.stack.pop() else {
            return Ok(());
        };
        let value = match open.node {
            Node::Sequence(items) => Value::Array(items),
            Node::Mapping { map, .. } => Value::Object(map),
        };
        if open.anchor != 0 {
            self.anchors.insert(open.anchor, value.clone());
        }
        // The value's slot was taken when it started: a sequence item counts once its value is
        // in, a mapping value fills the pending key.
        let slot = match self.stack.last() {
            None => Slot::Root,
            Some(_) => Slot::Child(open.path),
        };
        self.attach(slot, value)
    }

    fn alias(&mut self, id: usize, line: u32) -> Result<(), YamlError> {
        let slot = self.slot(line)?;
        let Some(anchored) = self.anchors.get(&id) else {
            return Err(error(line, "invalid YAML: unknown anchor"));
        };
        match slot {
            Slot::Key => {
                let name = match anchored {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => return Err(error(line, resolve::NULL_KEY)),
                    Value::Array(_) | Value::Object(_) => {
                        return Err(error(
                            line,
                            "mapping keys must be scalars (a list or mapping as a key has no JSON form)",
                        ))
                    }
                };
                self.set_key(name, false, line)
            }
            slot => {
                let value = anchored.clone();
                self.attach(slot, value)
            }
        }
    }

    /// Puts a completed value in its place.
    fn attach(&mut self, slot: Slot, value: Value) -> Result<(), YamlError> {
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(value);
            return Ok(());
        };
        match &mut top.node {
            Node::Sequence(items) => items.push(value),
            Node::Mapping { map, key, .. } => {
                let Some(k) = key.take() else {
                    return Ok(());
                };
                if k.merge {
                    let Slot::Child(source) = slot else {
                        return Ok(());
                    };
                    merge(map, &top.path, &source, value, &mut self.positions, k.line)?;
                } else {
                    map.insert(k.name, value);
                }
            }
        }
        Ok(())
    }
}

/// `path` and everything under it, not `pathX` siblings.
fn subtree<'p>(
    positions: &'p Positions,
    path: &'p str,
) -> impl Iterator<Item = (&'p String, u32)> + 'p {
    positions_under(positions, path)
        .filter(move |(p, _)| matches!(p.as_bytes().get(path.len()), None | Some(b'.' | b'[')))
        .map(|(p, line)| (p, *line))
}

fn remove_subtree(positions: &mut Positions, path: &str) {
    let doomed: Vec<String> = subtree(positions, path).map(|(p, _)| p.clone()).collect();
    for p in doomed {
        positions.remove(&p);
    }
}

/// Applies `<<: value` (written at `line`) to `map` (at `path`); the merged value was built at
/// `source`. Merged fields keep the lines they were written at, or take the line of the `<<`
/// when they come from an alias.
fn merge(
    map: &mut Map<String, Value>,
    path: &str,
    source: &str,
    value: Value,
    positions: &mut Positions,
    line: u32,
) -> Result<(), YamlError> {
    let not_a_map = || {
        error(
            line,
            "a `<<` merge key must refer to a mapping or a list of mappings",
        )
    };
    let sources: Vec<(String, Map<String, Value>)> = match value {
        Value::Object(m) => vec![(source.to_string(), m)],
        // go-yaml v2 merges a list from its end, so that earlier mappings win.
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, item)| match item {
                Value::Object(m) => Ok((format!("{source}[{i}]"), m)),
                _ => Err(not_a_map()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(not_a_map()),
    };
    for (from, entries) in sources {
        for (key, value) in entries {
            let target = join(path, &key);
            let origin = join(&from, &key);
            let mut moved: Vec<(String, u32)> = subtree(positions, &origin)
                .map(|(p, at)| (format!("{target}{}", &p[origin.len()..]), at))
                .collect();
            if moved.is_empty() {
                moved.push((target.clone(), line));
            }
            remove_subtree(positions, &target);
            positions.extend(moved);
            map.insert(key, value);
        }
    }
    remove_subtree(positions, source);
    Ok(())
}
