//! YAML text → JSON values plus the line of every field, read the way Kubernetes reads it.
//!
//! Decoding goes through `serde_json::Value` because the typed structs are plain serde structs and
//! `serde_path_to_error` reports failures as a path; keeping a path → line table next to the value
//! turns every such path back into a line of the user's file.
//!
//! Users paste what `kubectl` and `istioctl` accept, so the text is read as they read it
//! (`sigs.k8s.io/yaml` over go-yaml, see [`resolve`] and [`compat`]):
//! 1. the file is cut into documents on `---` lines before any parsing ([`split`]), and each
//!    document is parsed on its own: a document that does not parse fails alone, with its
//!    line in the whole file, and the others are read;
//! 2. where saphyr's parser reads differently from go-yaml's (indentation inside flow
//!    collections, `:` ending a plain scalar in one), the text is first rewritten so that it
//!    reads the same ([`compat`]);
//! 3. the parser's events go, after [`limits`] has checked each one, straight into the JSON
//!    value and the line table ([`build`]), with scalars resolved as go-yaml v2 resolves them
//!    and duplicate keys refused.

mod build;
mod compat;
mod limits;
mod resolve;
mod split;

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScanError};
use serde_json::Value;

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
/// The first document that cannot be read fails the whole text; [`read_documents`] reads the
/// others anyway. So does a text beyond the bounds of [`limits`] (nesting depth, size, alias
/// expansion).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    read_documents(text).into_iter().collect()
}

/// Reads every document of `text`, in order, as `kubectl` does: each is its value, or the
/// reason it cannot be read (with its line in the whole text). Empty documents are left out.
///
/// Documents are the pieces between `---` lines (see [`split`]); a piece holding several YAML
/// documents (separated by `...`) is read up to the end of its first, as go-yaml reads it.
/// A text larger than [`MAX_TEXT_BYTES`] is one error.
pub(crate) fn read_documents(text: &str) -> Vec<Result<Document, YamlError>> {
    if let Err(e) = limits::check_text_size(text) {
        return vec![Err(e)];
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut budgets = Budgets {
        paths: PathBudget::for_text(text),
        alias_nodes: 0,
    };
    let mut out = Vec::new();
    for chunk in split::split(text) {
        if let Some((line, rest)) = chunk.bad_separator {
            out.push(Err(YamlError {
                line,
                message: format!(
                    "invalid document separator `---{}{rest}`: Kubernetes allows only spaces or a \
                     # comment after `---`, and does not read the document it starts",
                    if rest.starts_with('-') { "" } else { " " }
                ),
            }));
            continue;
        }
        if let Some(result) = read_chunk(chunk, &mut budgets) {
            out.push(result);
        }
    }
    out
}

/// What all documents of a text share: the bounds are on the whole text, so that splitting a
/// hostile text into many documents does not multiply them.
#[derive(Clone)]
struct Budgets {
    paths: PathBudget,
    alias_nodes: u64,
}

/// One `---`-separated piece: its first document, `None` when it has none.
fn read_chunk(
    chunk: split::Chunk<'_>,
    budgets: &mut Budgets,
) -> Option<Result<Document, YamlError>> {
    let line_offset = chunk.first_line.saturating_sub(1);
    let as_written = Source {
        text: chunk.text,
        original: chunk.text,
        rewrite: None,
        line_offset,
    };
    let edits = compat::scan(chunk.text);
    if edits.is_empty() {
        return parse(&as_written, budgets, None).0;
    }
    // Padding only makes saphyr accept indentation that go-yaml ignores: when saphyr reads the
    // text as written, it reads it as go-yaml does, and nothing needs rewriting.
    let mut failed = None;
    if edits.iter().all(|e| matches!(e.what, compat::What::Pad(_))) {
        let before = budgets.clone();
        let result = parse(&as_written, budgets, None).0;
        if !matches!(result, Some(Err(_))) {
            return result;
        }
        failed = Some((result, budgets.clone()));
        *budgets = before;
    }
    let rewrite = compat::Rewrite::new(chunk.text, &edits);
    let before = budgets.clone();
    let mut verifier = compat::Verifier::new(&rewrite);
    let rewritten = Source {
        text: &rewrite.text,
        original: chunk.text,
        rewrite: Some(&rewrite),
        line_offset,
    };
    let (result, stopped) = parse(&rewritten, budgets, Some(&mut verifier));
    if verifier.holds(&rewrite, stopped) {
        return result;
    }
    // The rewrite did not read as intended: the text as written decides.
    match failed {
        Some((result, after)) => {
            *budgets = after;
            result
        }
        None => {
            *budgets = before;
            parse(&as_written, budgets, None).0
        }
    }
}

/// The text given to the parser, and where it came from.
struct Source<'s> {
    text: &'s str,
    /// The text as written (differs from `text` when rewritten).
    original: &'s str,
    rewrite: Option<&'s compat::Rewrite>,
    /// Lines before this text's first in the whole file.
    line_offset: u32,
}

/// Parses the first document of `source`. Also returns the char offset of `source.text`
/// where reading stopped: on an error, or at the end of the first document (`usize::MAX`
/// when the parser read the whole text).
fn parse(
    source: &Source<'_>,
    budgets: &mut Budgets,
    mut verifier: Option<&mut compat::Verifier<'_>>,
) -> (Option<Result<Document, YamlError>>, usize) {
    let shift = |e: YamlError| YamlError {
        line: e.line.saturating_add(source.line_offset),
        message: e.message,
    };
    let mut limits = limits::Limits::new(source.text, source.rewrite, budgets.alias_nodes);
    let mut builder = build::Builder::new(&mut budgets.paths, source.line_offset);
    let mut failure = None;
    let mut stopped = usize::MAX;
    for event in Parser::new_from_str(source.text) {
        let (event, span) = match event {
            Ok(event) => event,
            Err(e) => {
                failure = Some((e.marker().index(), scan_error(&e, source)));
                break;
            }
        };
        if let Some(v) = verifier.as_deref_mut() {
            v.observe(&event, span);
        }
        let last = matches!(event, Event::DocumentEnd) && builder.has_root();
        let step = limits
            .check(&event, span)
            .map_err(shift)
            .and_then(|()| builder.event(event, span));
        if let Err(e) = step {
            failure = Some((span.start.index(), e));
            break;
        }
        if last {
            stopped = span.end.index();
            break;
        }
    }
    budgets.alias_nodes = limits.alias_nodes();
    match failure {
        Some((at, e)) => (Some(Err(e)), at),
        None => (builder.finish().map(Ok), stopped),
    }
}

fn scan_error(e: &ScanError, source: &Source<'_>) -> YamlError {
    // The column in the text as written.
    let offset = CharCursor::new(source.text).byte_offset(e.marker().index());
    let offset = source.rewrite.map_or(offset, |r| r.original(offset));
    let offset = offset.min(source.original.len());
    let line_start = source.original[..offset].rfind('\n').map_or(0, |i| i + 1);
    let column = source.original[line_start..offset].chars().count() + 1;
    YamlError {
        line: to_line(e.marker().line()).saturating_add(source.line_offset),
        message: format!("invalid YAML: {} (column {column})", e.info()),
    }
}

/// Character index → byte offset in one text, for saphyr's markers (which count characters):
/// moves forward from the last lookup, and starts over when asked for an earlier one.
pub(super) struct CharCursor<'t> {
    text: &'t str,
    ascii: bool,
    chars: usize,
    bytes: usize,
}

impl<'t> CharCursor<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        CharCursor {
            text,
            ascii: text.is_ascii(),
            chars: 0,
            bytes: 0,
        }
    }

    pub(super) fn byte_offset(&mut self, char_index: usize) -> usize {
        if self.ascii {
            return char_index.min(self.text.len());
        }
        if char_index < self.chars {
            self.chars = 0;
            self.bytes = 0;
        }
        let rest = &self.text[self.bytes..];
        let advance = rest
            .char_indices()
            .nth(char_index - self.chars)
            .map_or(rest.len(), |(b, _)| b);
        self.chars = char_index;
        self.bytes += advance;
        self.bytes
    }

    pub(super) fn char_at(&mut self, char_index: usize) -> Option<char> {
        let offset = self.byte_offset(char_index);
        self.text[offset..].chars().next()
    }
}

/// Bounds the bytes of field paths recorded for one text. Each node's path repeats all of its
/// ancestors' keys, so a deep document with long keys and many leaves would otherwise make the
/// position table hundreds of times larger than the text. Real documents use about one byte of
/// paths per byte of text, the `kind: List`s that `kubectl get -o yaml` prints up to about
/// twenty (every path repeats `items[N].`); the bound leaves a margin above that.
#[derive(Clone)]
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

/// Joins a parent path and a map key the way paths are written everywhere: `a.b`, `a[0].b`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Also records every path under its camelCase spelling (`sni_hosts` → `sniHosts`), so code that
/// reports on a field by its canonical name finds the line however the user spelled it.
pub(super) fn add_camel_case_aliases(positions: &mut Positions) {
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

    #[test]
    fn a_rewrite_that_does_not_read_as_intended_is_not_used() {
        // The pre-pass takes the `[` starting a continuation line of a plain scalar for a flow
        // sequence and quotes `x:` in it; the parse shows no such quoted scalar, so the text
        // as written is read (go-yaml reads the same string).
        let docs = parse_documents("desc: see\n  [x:] here\n").unwrap();
        assert_eq!(docs[0].value["desc"], "see [x:] here");
    }

    #[test]
    fn a_piece_is_read_to_the_end_of_its_first_document() {
        // go-yaml decodes one document per piece: what follows `...` is not read.
        let docs = parse_documents("x: 1\n...\ny: [\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value, serde_json::json!({"x": 1}));
        // Nor are edits made after it checked.
        let docs = parse_documents("x: [a:]\n...\ny: [\n  \"b\"\n]\n").unwrap();
        assert_eq!(docs[0].value, serde_json::json!({"x": ["a:"]}));
    }

    #[test]
    fn alias_expansion_is_bounded_over_the_whole_file() {
        // 9,000 alias nodes per document is fine alone; twenty documents of it are not.
        let doc = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["x"; 90].join(", "),
            vec!["*a"; 99].join(", ")
        );
        assert!(parse_documents(&doc).is_ok());
        let many = vec![doc; 20].join("---\n");
        let results = read_documents(&many);
        assert_eq!(results.len(), 20);
        let first_bad = results.iter().position(Result::is_err).unwrap();
        assert!(first_bad > 1, "{first_bad}");
        let err = results[first_bad].as_ref().unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }
}
