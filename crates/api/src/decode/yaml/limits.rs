//! Bounds on what one text may make the decoder build, checked on the parser's event stream
//! before the builder sees each event, so that no recursive step (dropping the JSON value,
//! typed decoding, validation, compile) ever meets a document deeper or larger than these
//! bounds. A config file is written by people and tools we do not control, and a live edit must
//! never crash or stall a running proxy.

use std::collections::HashMap;

use saphyr_parser::{Event, Span};

use super::compat::Rewrite;
use super::{to_line, CharCursor, YamlError};

/// Deepest nesting accepted, counted in mappings and sequences (the root one is level 1).
///
/// Istio resources are shallow: the deepest field (`spec.trafficPolicy.portLevelSettings[].
/// loadBalancer.consistentHash.httpCookie.ttl`) is about a dozen levels, two more inside a
/// `kind: List`; Istio's own CRD schemas, which may sit in the same folder and are parsed too,
/// reach about forty. go-yaml (what Kubernetes reads YAML with) stops at 10,000 levels, which
/// only bounds its own stack; ours must fit every recursive step in a 2 MiB tokio worker stack,
/// and at this bound all of them together use well under 1 MiB (a test holds it to that).
pub const MAX_DEPTH: usize = 128;

/// Largest text decoded at once: the cap on configuration files, applied here too so that text
/// from any source (a file, the Kubernetes API, xDS) meets the same bound.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024;

/// Largest single object: the Kubernetes API server refuses request bodies above 3 MiB (and etcd
/// stores at most 1.5 MiB), so no resource that could exist in a cluster comes near. Applied to
/// each YAML document, or to each item of a `kind: List` (which `kubectl get -o yaml` prints for
/// many objects and which may itself be larger).
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;

/// Nodes that aliases may add, counting each `*alias` as the size of what it refers to and each
/// anchored node once more (the builder keeps a copy of it). Real files use anchors for a few
/// small snippets; without a bound, nine nested lines of aliases make a billion nodes.
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// The size and nesting height (0 for a scalar) of a node once aliases are expanded.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: u64,
    height: usize,
}

/// What an open collection is to the document: the objects whose size is bounded are the root
/// and, when the document is a `kind: List`, the items of its root `items` sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Items,
    Item,
    Other,
}

#[derive(Debug)]
struct Open {
    anchor: usize,
    mapping: bool,
    role: Role,
    /// Document node count when this collection started.
    nodes_at_start: u64,
    /// Tallest child so far.
    child_height: usize,
    /// Children completed so far; in a mapping, even means the next child is a key.
    children: usize,
    start_byte: usize,
    line: u32,
}

/// Refuses a text larger than [`MAX_TEXT_BYTES`] before anything reads it.
pub(super) fn check_text_size(text: &str) -> Result<(), YamlError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(YamlError {
            line: 1,
            message: format!(
                "text is {} bytes, larger than the {} MiB that sluice decodes at once",
                text.len(),
                MAX_TEXT_BYTES / (1024 * 1024)
            ),
        });
    }
    Ok(())
}

/// Checks the events of one document's text, in order.
pub(super) struct Limits<'t> {
    /// Markers count characters, sizes are in bytes of the original text.
    cursor: CharCursor<'t>,
    /// The edits made to the text before parsing, if any (sizes count the text as written).
    rewrite: Option<&'t Rewrite>,
    stack: Vec<Open>,
    anchors: HashMap<usize, Shape>,
    /// Counted over all the documents of a file: see [`Limits::alias_nodes`].
    alias_nodes: u64,
    nodes: u64,
    root_key: Option<String>,
    is_list: bool,
    /// Largest object of the current document so far: (bytes, line).
    root: Option<(usize, u32)>,
    largest_item: Option<(usize, u32)>,
}

impl<'t> Limits<'t> {
    /// `alias_nodes`: what the file's earlier documents used of [`MAX_ALIAS_NODES`], so that
    /// splitting a bomb over many documents does not multiply the bound.
    pub(super) fn new(text: &'t str, rewrite: Option<&'t Rewrite>, alias_nodes: u64) -> Self {
        Limits {
            cursor: CharCursor::new(text),
            rewrite,
            stack: Vec::new(),
            anchors: HashMap::new(),
            alias_nodes,
            nodes: 0,
            root_key: None,
            is_list: false,
            root: None,
            largest_item: None,
        }
    }

    /// Alias nodes counted so far, this document's included.
    pub(super) fn alias_nodes(&self) -> u64 {
        self.alias_nodes
    }

    /// Checks one event before anything is built from it.
    pub(super) fn check(&mut self, event: &Event<'_>, span: Span) -> Result<(), YamlError> {
        let line = to_line(span.start.line());
        match event {
            Event::DocumentStart(_) => {
                // Anchors belong to their document.
                self.anchors.clear();
                self.nodes = 0;
                self.root_key = None;
                self.is_list = false;
                self.root = None;
                self.largest_item = None;
            }
            Event::DocumentEnd => self.document_end()?,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(too_deep(line));
                }
                let mapping = matches!(event, Event::MappingStart(..));
                let role = self.role_of_new_child(mapping);
                let start_byte = match role {
                    Role::Root | Role::Item => self.byte_offset(span.start.index()),
                    Role::Items | Role::Other => 0,
                };
                self.nodes += 1;
                self.stack.push(Open {
                    anchor: *anchor,
                    mapping,
                    role,
                    nodes_at_start: self.nodes,
                    child_height: 0,
                    children: 0,
                    start_byte,
                    line,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = self.stack.pop() else {
                    return Ok(());
                };
                let shape = Shape {
                    nodes: self.nodes - open.nodes_at_start + 1,
                    height: open.child_height + 1,
                };
                if matches!(open.role, Role::Root | Role::Item) {
                    let bytes = self
                        .byte_offset(span.end.index())
                        .saturating_sub(open.start_byte);
                    let slot = if open.role == Role::Root {
                        &mut self.root
                    } else {
                        &mut self.largest_item
                    };
                    if slot.is_none_or(|(b, _)| bytes > b) {
                        *slot = Some((bytes, open.line));
                    }
                }
                self.anchored(open.anchor, shape, line)?;
                self.completed(shape, None);
            }
            Event::Scalar(value, _, anchor, _) => {
                self.nodes += 1;
                let shape = Shape {
                    nodes: 1,
                    height: 0,
                };
                self.anchored(*anchor, shape, line)?;
                self.completed(shape, Some(value));
            }
            Event::Alias(id) => {
                let Some(shape) = self.anchors.get(id).copied() else {
                    return Err(YamlError {
                        line,
                        message: format!(
                            "invalid YAML: while parsing node, found unknown anchor (column {})",
                            span.start.col() + 1
                        ),
                    });
                };
                if self.stack.len() + shape.height > MAX_DEPTH {
                    return Err(too_deep(line));
                }
                self.nodes += shape.nodes;
                self.add_alias_nodes(shape.nodes, line)?;
                self.completed(shape, None);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// The role of a collection about to start under the current top of the stack.
    fn role_of_new_child(&self, mapping: bool) -> Role {
        match self.stack.last() {
            None => Role::Root,
            Some(parent) if parent.role == Role::Items => Role::Item,
            Some(parent)
                if parent.role == Role::Root
                    && parent.mapping
                    && parent.children % 2 == 1
                    && !mapping
                    && self.root_key.as_deref() == Some("items") =>
            {
                Role::Items
            }
            Some(_) => Role::Other,
        }
    }

    /// A child of the top collection is complete; `scalar` is its text when it is one.
    fn completed(&mut self, shape: Shape, scalar: Option<&str>) {
        let Some(parent) = self.stack.last_mut() else {
            return;
        };
        // The root mapping's `kind: List` and `items:` decide which objects are bounded.
        if parent.role == Role::Root && parent.mapping {
            if parent.children % 2 == 0 {
                self.root_key = scalar.map(str::to_string);
            } else if self.root_key.as_deref() == Some("kind") && scalar == Some("List") {
                self.is_list = true;
            }
        }
        parent.children += 1;
        parent.child_height = parent.child_height.max(shape.height);
    }

    fn anchored(&mut self, anchor: usize, shape: Shape, line: u32) -> Result<(), YamlError> {
        // Anchor ids start at 1; 0 means none.
        if anchor == 0 {
            return Ok(());
        }
        self.anchors.insert(anchor, shape);
        self.add_alias_nodes(shape.nodes, line)
    }

    fn add_alias_nodes(&mut self, nodes: u64, line: u32) -> Result<(), YamlError> {
        self.alias_nodes = self.alias_nodes.saturating_add(nodes);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(YamlError {
                line,
                message: format!(
                    "anchors and aliases expand to more than {MAX_ALIAS_NODES} nodes; write the \
                     repeated parts out, or use fewer aliases"
                ),
            });
        }
        Ok(())
    }

    fn document_end(&mut self) -> Result<(), YamlError> {
        let (what, largest) = if self.is_list {
            ("an item of this List", self.largest_item)
        } else {
            ("this document", self.root)
        };
        match largest {
            Some((bytes, line)) if bytes > MAX_OBJECT_BYTES => Err(YamlError {
                line,
                message: format!(
                    "{what} is {bytes} bytes, larger than the {} MiB Kubernetes accepts for one \
                     object",
                    MAX_OBJECT_BYTES / (1024 * 1024)
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The byte offset in the original text of a character index of the parsed one.
    fn byte_offset(&mut self, char_index: usize) -> usize {
        let offset = self.cursor.byte_offset(char_index);
        self.rewrite.map_or(offset, |r| r.original(offset))
    }
}

fn too_deep(line: u32) -> YamlError {
    YamlError {
        line,
        message: format!("document nested deeper than {MAX_DEPTH} levels"),
    }
}
