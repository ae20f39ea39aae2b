//! Where saphyr reads YAML differently from go-yaml, rewritten so that it reads it the same.
//!
//! Kubernetes' YAML reader, go-yaml, is a port of libyaml; saphyr follows the YAML 1.2 spec more
//! closely. Two of their differences change what users paste from Kubernetes examples:
//!
//! 1. **Indentation inside flow collections.** libyaml does not check indentation once inside
//!    `[...]` or `{...}`, nor on the continuation lines of a quoted string. saphyr (like the
//!    spec) wants those lines indented deeper than the block that holds the collection, so it
//!    refuses the common
//!    ```yaml
//!    spec:
//!      hosts: [
//!        "a.example.com"
//!      ]
//!    ```
//!    with "invalid indentation" (the `]` is at the column of `hosts`).
//! 2. **A colon at the end of a plain scalar in a flow collection.** go-yaml ends a plain
//!    scalar at `:` only when a space or a line break follows, so `[2001:db8::]` is one
//!    string; saphyr also ends it before a flow indicator (`,[]{}`) and reads a mapping
//!    `{2001:db8:: null}`.
//!
//! No maintained Rust YAML parser reads these as go-yaml does (libyaml's own ports,
//! `unsafe-libyaml` and `libyaml-safer`, follow libyaml 0.2.5, which refuses `[2001:db8::]`
//! with "found unexpected ':'"; go-yaml changed that rule). So before parsing, [`scan`] reads
//! the text with go-yaml's rules for just the parts that matter here: where flow collections
//! and quoted scalars begin and end, block scalars (skipped), comments and plain scalars. It
//! then asks for two kinds of edits that change nothing for go-yaml:
//! - spaces at the start of a line that lies inside a flow collection or a quoted scalar and is
//!   indented less than the collection's `[` (libyaml ignores that indentation; in a quoted
//!   scalar, leading blanks of a continuation line are not part of the value);
//! - single quotes around a plain scalar in a flow collection that ends with `:` right before
//!   a flow indicator (go-yaml resolves such a scalar to a string in any case: no number,
//!   boolean or null ends with a colon), doubling the quotes inside it.
//!
//! Line numbers do not change. Column numbers and byte offsets are mapped back through
//! [`Rewrite::original`]. As this is not a full parser, the parse of a rewritten text is
//! checked afterwards ([`Verifier`]): every padded line must lie inside a flow collection or a
//! quoted scalar of the parse and every quoted scalar must be one; otherwise the original text
//! is parsed instead, which is what would have happened without this module. Edits inside a
//! collection or string that never ends are not made: the text is broken anyway, and the
//! original gives the better error.

use std::collections::HashMap;

use saphyr_parser::{Event, ScalarStyle, Span};

use super::CharCursor;

/// One insertion into the text, at a byte offset of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insert {
    pub at: usize,
    pub what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum What {
    /// Spaces at a line start that is inside a flow collection or a quoted scalar.
    Pad(usize),
    /// The `'` that opens a quoted plain scalar.
    OpenQuote,
    /// A `'` doubling one inside the scalar.
    Quote,
    /// The `'` that closes it.
    CloseQuote,
}

/// The edits that make saphyr read `text` as go-yaml does, in text order. Padding is only
/// needed where saphyr refuses the text as written; quoting changes what it reads.
pub(super) fn scan(text: &str) -> Vec<Insert> {
    let mut s = Scanner {
        b: text.as_bytes(),
        line_start: 0,
        line_first: 0,
        col_at: (0, 0),
        depth: 0,
        opener_col: 0,
        quote: None,
        quote_col: 0,
        block: None,
        plain: None,
        pending: Vec::new(),
        done: Vec::new(),
    };
    let mut start = 0;
    while start < s.b.len() {
        let end = s.b[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(s.b.len(), |i| start + i);
        let content_end = if end > start && s.b[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        s.line(start, content_end);
        start = end + 1;
    }
    // Edits inside a collection or quote still open at the end are dropped (see above).
    let mut edits = s.done;
    // Pads come first among edits at one offset (they were found first).
    edits.sort_by_key(|e| e.at);
    edits
}

struct Quote {
    double: bool,
}

struct BlockScalar {
    /// Indentation of the line with the `|` or `>`: content is indented deeper.
    parent_indent: usize,
    /// Indentation of the content, once known.
    indent: Option<usize>,
}

/// A plain scalar inside a flow collection, being read.
struct Plain {
    start: usize,
    /// Just past its last non-blank byte.
    end: usize,
    /// Offsets of the `'` inside it.
    quotes: Vec<usize>,
}

struct Scanner<'t> {
    b: &'t [u8],
    line_start: usize,
    /// The current line's first non-blank byte.
    line_first: usize,
    /// (byte, column) of the last column asked for on the current line: columns are asked for
    /// left to right, so counting goes on from there (from the line start, a line of many
    /// brackets would cost its length squared).
    col_at: (usize, usize),
    /// Nesting of flow collections.
    depth: usize,
    /// Column (in characters) of the outermost open `[` or `{`.
    opener_col: usize,
    quote: Option<Quote>,
    /// Column of the open quoted scalar's opening quote, outside flow collections.
    quote_col: usize,
    block: Option<BlockScalar>,
    plain: Option<Plain>,
    /// Edits inside the open outermost flow collection, or the open quoted scalar outside one.
    pending: Vec<Insert>,
    done: Vec<Insert>,
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

impl Scanner<'_> {
    fn at(&self, i: usize, end: usize) -> Option<u8> {
        (i < end).then(|| self.b[i])
    }

    /// True when `i` is the end of the line or a blank.
    fn blank_or_end(&self, i: usize, end: usize) -> bool {
        self.at(i, end).is_none_or(is_blank)
    }

    /// Column, in characters, of byte `i` of the current line.
    fn col(&mut self, i: usize) -> usize {
        let (from, col) = if self.col_at.0 <= i {
            self.col_at
        } else {
            (self.line_start, 0)
        };
        let col = col
            + self.b[from..i]
                .iter()
                .filter(|&&c| c & 0xC0 != 0x80)
                .count();
        self.col_at = (i, col);
        col
    }

    /// After something closed: the edits found inside it are kept once nothing is open.
    fn commit_if_closed(&mut self) {
        if self.depth == 0 && self.quote.is_none() {
            self.done.append(&mut self.pending);
        }
    }

    fn line(&mut self, start: usize, end: usize) {
        self.line_start = start;
        self.col_at = (start, 0);
        let line = &self.b[start..end];
        let ws = line.iter().take_while(|&&c| is_blank(c)).count();
        let first = start + ws;
        self.line_first = first;
        let blank = first == end;

        if let Some(block) = &mut self.block {
            if blank {
                return;
            }
            let indent = line.iter().take_while(|&&c| c == b' ').count();
            match block.indent {
                None if indent > block.parent_indent => {
                    block.indent = Some(indent);
                    return;
                }
                Some(i) if indent >= i => return,
                _ => self.block = None,
            }
        }

        let in_flow = self.depth > 0;
        if (in_flow || self.quote.is_some()) && !blank && !is_document_marker(line) {
            // Deep enough for saphyr: the bracket of the collection, or the opening quote of a
            // scalar outside any, is deeper than the block that holds it.
            let need = if in_flow {
                self.opener_col
            } else {
                self.quote_col
            };
            let comment = self.quote.is_none() && line[ws] == b'#';
            if ws < need && !comment {
                self.pending.push(Insert {
                    at: start,
                    what: What::Pad(need - ws),
                });
            }
        }

        let mut i = first;
        // In block context: whether a node may start here (after `- `, `: `, at line start).
        let mut expect_node = true;
        while i < end {
            let c = self.b[i];
            if let Some(q) = &self.quote {
                let double = q.double;
                i = self.quoted(i, end, double);
                expect_node = false;
                continue;
            }
            if self.plain.is_some() {
                i = self.flow_plain(i, end);
                continue;
            }
            if is_blank(c) {
                i += 1;
                continue;
            }
            let after_blank = i == first || is_blank(self.b[i - 1]);
            if c == b'#' && after_blank {
                return;
            }
            if self.depth > 0 {
                i = self.flow_token(i, end);
                continue;
            }
            // Block context.
            let next_blank = self.blank_or_end(i + 1, end);
            if expect_node {
                match c {
                    b'[' | b'{' => {
                        self.depth = 1;
                        self.opener_col = self.col(i);
                        i += 1;
                        continue;
                    }
                    b'"' | b'\'' => {
                        self.open_quote(i, c == b'"');
                        i += 1;
                        continue;
                    }
                    b'|' | b'>' => {
                        // The header (`|2-`, `>+`) may give the content's indentation.
                        let explicit = self.b[i + 1..end]
                            .iter()
                            .take_while(|&&c| !is_blank(c))
                            .find(|c| c.is_ascii_digit())
                            .map(|d| usize::from(d - b'0'));
                        let parent_indent = line.iter().take_while(|&&c| c == b' ').count();
                        self.block = Some(BlockScalar {
                            parent_indent,
                            indent: explicit.map(|d| parent_indent + d),
                        });
                        return;
                    }
                    b'-' | b'?' | b':' if next_blank => {
                        i += 1;
                        continue;
                    }
                    b'&' | b'!' | b'*' => {
                        expect_node = c != b'*';
                        while i < end && !is_blank(self.b[i]) {
                            i += 1;
                        }
                        continue;
                    }
                    b'%' if i == start => return,
                    _ => {}
                }
            } else if c == b':' && next_blank {
                expect_node = true;
                i += 1;
                continue;
            }
            // A plain scalar in block context: flow indicators and quotes are its content.
            // It ends at `: ` (a key), at ` #` or at the end of the line.
            while i < end {
                let c = self.b[i];
                if c == b':' && self.blank_or_end(i + 1, end) {
                    break;
                }
                if c == b'#' && is_blank(self.b[i - 1]) {
                    return;
                }
                i += 1;
            }
            if i < end {
                expect_node = true;
                i += 1;
            }
        }
    }

    fn open_quote(&mut self, i: usize, double: bool) {
        self.quote = Some(Quote { double });
        if self.depth == 0 {
            self.quote_col = self.col(i);
        }
    }

    /// Reads a quoted scalar from `i` (just past its opening quote, or a line start inside it)
    /// to its closing quote or the end of the line; returns where reading stopped.
    fn quoted(&mut self, mut i: usize, end: usize, double: bool) -> usize {
        while i < end {
            let c = self.b[i];
            if double && c == b'\\' {
                i += 2;
                continue;
            }
            if !double && c == b'\'' && self.at(i + 1, end) == Some(b'\'') {
                i += 2;
                continue;
            }
            if c == if double { b'"' } else { b'\'' } {
                self.quote = None;
                self.commit_if_closed();
                return i + 1;
            }
            i += 1;
        }
        end
    }

    /// One token in a flow collection, at a non-blank byte `i` that is not a comment.
    fn flow_token(&mut self, i: usize, end: usize) -> usize {
        match self.b[i] {
            b'[' | b'{' => self.depth += 1,
            b']' | b'}' => {
                self.depth -= 1;
                self.commit_if_closed();
            }
            c @ (b'"' | b'\'') => self.open_quote(i, c == b'"'),
            // Indicators, and characters go-yaml refuses to start a token with.
            b',' | b'?' | b':' | b'|' | b'>' | b'%' | b'@' | b'`' => {}
            b'-' if self.blank_or_end(i + 1, end) => {}
            b'&' | b'!' | b'*' => {
                let mut j = i + 1;
                while j < end && !is_blank(self.b[j]) && !b",[]{}".contains(&self.b[j]) {
                    j += 1;
                }
                return j;
            }
            _ => {
                self.plain = Some(Plain {
                    start: i,
                    end: i,
                    quotes: Vec::new(),
                });
                return self.flow_plain(i, end);
            }
        }
        i + 1
    }

    /// Continues the plain scalar being read in a flow collection with go-yaml's rules: it
    /// ends before `: ` (or `:` at the end of a line), ` #`, and any of `,?[]{}`; a colon
    /// before anything else is part of it, and it may go on over several lines.
    fn flow_plain(&mut self, mut i: usize, end: usize) -> usize {
        let line_first = self.line_first;
        while i < end {
            let c = self.b[i];
            if is_blank(c) {
                i += 1;
                continue;
            }
            let after_blank = i == line_first || is_blank(self.b[i - 1]);
            let ends = (c == b'#' && after_blank)
                || (c == b':' && self.blank_or_end(i + 1, end))
                || b",?[]{}".contains(&c);
            if ends {
                if let Some(plain) = self.plain.take() {
                    if c != b'?' && b",[]{}".contains(&c) && plain.end == i && self.b[i - 1] == b':'
                    {
                        self.quote_plain(plain);
                    }
                }
                return i;
            }
            if let Some(plain) = &mut self.plain {
                if c == b'\'' {
                    plain.quotes.push(i);
                }
                plain.end = i + 1;
            }
            i += 1;
        }
        end
    }

    fn quote_plain(&mut self, plain: Plain) {
        self.pending.push(Insert {
            at: plain.start,
            what: What::OpenQuote,
        });
        for q in plain.quotes {
            self.pending.push(Insert {
                at: q,
                what: What::Quote,
            });
        }
        self.pending.push(Insert {
            at: plain.end,
            what: What::CloseQuote,
        });
    }
}

/// `---` or `...` and then a blank or the end: left alone so that the parser refuses it where
/// go-yaml would.
fn is_document_marker(line: &[u8]) -> bool {
    (line.starts_with(b"---") || line.starts_with(b"..."))
        && line.get(3).is_none_or(|&c| is_blank(c))
}

/// What to check in the parse of a rewritten text, at char offsets of that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// This line start must be inside a flow collection or a quoted scalar.
    Padded(usize),
    /// A single-quoted scalar must start at or before `open` and end just after `close`.
    Quoted { open: usize, close: usize },
}

/// A text with its edits applied, and the way back to the original's offsets.
pub(super) struct Rewrite {
    pub text: String,
    /// Per insertion: (byte offset in `text` where it starts, its length, original offset).
    inserts: Vec<(usize, usize, usize)>,
    checks: Vec<Check>,
}

impl Rewrite {
    pub(super) fn new(original: &str, edits: &[Insert]) -> Rewrite {
        let extra: usize = edits
            .iter()
            .map(|e| match e.what {
                What::Pad(n) => n,
                What::OpenQuote | What::Quote | What::CloseQuote => 1,
            })
            .sum();
        let mut text = String::with_capacity(original.len() + extra);
        let mut inserts = Vec::with_capacity(edits.len());
        let mut checks = Vec::new();
        let mut copied = 0;
        let mut chars = 0;
        let mut open = 0;
        for e in edits {
            let segment = &original[copied..e.at];
            chars += segment.chars().count();
            text.push_str(segment);
            copied = e.at;
            let start = text.len();
            match e.what {
                What::Pad(n) => {
                    checks.push(Check::Padded(chars));
                    text.push_str(&" ".repeat(n));
                }
                What::OpenQuote => {
                    open = chars;
                    text.push('\'');
                }
                What::Quote => text.push('\''),
                What::CloseQuote => {
                    checks.push(Check::Quoted { open, close: chars });
                    text.push('\'');
                }
            }
            chars += text.len() - start;
            inserts.push((start, text.len() - start, e.at));
        }
        text.push_str(&original[copied..]);
        Rewrite {
            text,
            inserts,
            checks,
        }
    }

    /// The byte offset in the original text of byte `offset` of the rewritten one (an offset
    /// inside an insertion maps to where it was inserted).
    pub(super) fn original(&self, offset: usize) -> usize {
        let n = self
            .inserts
            .partition_point(|&(start, _, _)| start <= offset);
        if n == 0 {
            return offset;
        }
        let (start, len, at) = self.inserts[n - 1];
        if offset < start + len {
            return at;
        }
        // Everything inserted up to and including the last insertion before `offset`.
        let inserted = start + len - at;
        offset - inserted
    }
}

/// Watches the events of a rewritten text's parse for what [`Rewrite`]'s checks need.
pub(super) struct Verifier<'t> {
    cursor: CharCursor<'t>,
    /// Open collections: `Some(start)` for a flow one (char offset of its bracket).
    open: Vec<Option<usize>>,
    /// How many of them are flow collections.
    open_flows: usize,
    /// Outermost flow collections, bracket to bracket, in text order (so disjoint and sorted).
    flows: Vec<(usize, usize)>,
    /// Quoted scalars over several lines, in text order.
    quoted: Vec<(usize, usize)>,
    /// Single-quoted scalars: end → start, char offsets.
    single: HashMap<usize, usize>,
}

impl<'t> Verifier<'t> {
    pub(super) fn new(rewrite: &'t Rewrite) -> Self {
        Verifier {
            cursor: CharCursor::new(&rewrite.text),
            open: Vec::new(),
            open_flows: 0,
            flows: Vec::new(),
            quoted: Vec::new(),
            single: HashMap::new(),
        }
    }

    pub(super) fn observe(&mut self, event: &Event<'_>, span: Span) {
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let (start, end) = (span.start.index(), span.end.index());
                // A flow collection's span ends just past its bracket (after any anchor or
                // tag); a block collection's span is empty or ends before its first entry.
                let flow = end > start && matches!(self.cursor.char_at(end - 1), Some('[' | '{'));
                self.open.push(flow.then(|| end - 1));
                self.open_flows += usize::from(flow);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Some(start)) = self.open.pop() {
                    self.open_flows -= 1;
                    if self.open_flows == 0 {
                        self.flows.push((start, span.start.index()));
                    }
                }
            }
            Event::Scalar(_, style, ..) => {
                let (start, end) = (span.start.index(), span.end.index());
                if matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted)
                    && span.start.line() != span.end.line()
                {
                    self.quoted.push((start, end));
                }
                if *style == ScalarStyle::SingleQuoted {
                    self.single.insert(end, start);
                }
            }
            _ => {}
        }
    }

    /// True when every check before char offset `upto` (the whole text: `usize::MAX`) holds,
    /// so the parse so far reads the rewritten text as go-yaml reads the original.
    pub(super) fn holds(mut self, rewrite: &Rewrite, upto: usize) -> bool {
        // The outermost collection still open where the parse stopped reaches to there.
        if let Some(start) = self.open.iter().flatten().next() {
            self.flows.push((*start, usize::MAX));
        }
        let inside = |ranges: &[(usize, usize)], at: usize| {
            let n = ranges.partition_point(|&(start, _)| start < at);
            n > 0 && at <= ranges[n - 1].1
        };
        rewrite.checks.iter().all(|check| match *check {
            Check::Padded(at) => at >= upto || inside(&self.flows, at) || inside(&self.quoted, at),
            Check::Quoted { open, close } => {
                close >= upto
                    || self
                        .single
                        .get(&(close + 1))
                        .is_some_and(|&start| start <= open)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(text: &str) -> String {
        Rewrite::new(text, &scan(text)).text
    }

    #[test]
    fn lines_inside_flow_collections_are_indented_to_their_bracket() {
        assert_eq!(
            rewritten("spec:\n  hosts: [\n    \"a\",\n  \"b\"\n  ]\nx: 1\n"),
            "spec:\n  hosts: [\n         \"a\",\n         \"b\"\n         ]\nx: 1\n"
        );
        assert_eq!(
            rewritten("hosts: [\n  a,\n]\n"),
            "hosts: [\n       a,\n       ]\n"
        );
        // Comments, blank lines, and flow collections that never close are left alone.
        assert_eq!(rewritten("a: [\n# c\n\n]\n"), "a: [\n# c\n\n   ]\n");
        assert_eq!(rewritten("a: [1,\nb: 2\n"), "a: [1,\nb: 2\n");
        // A whole document in flow style starts at column 0: nothing to do.
        assert_eq!(
            rewritten("{\n\"a\": [\n1\n]\n}\n"),
            "{\n\"a\": [\n1\n]\n}\n"
        );
    }

    #[test]
    fn quoted_continuation_lines_and_block_scalars() {
        assert_eq!(rewritten("a:\n  b: \"x\ny\"\n"), "a:\n  b: \"x\n     y\"\n");
        // `[` inside block scalars, plain scalars and comments opens nothing.
        let text = "a: |\n  [x\nb\n";
        assert_eq!(rewritten(text), text);
        let text = "a: b[0\nc: d # [\ne: 'it''s ['\nf:\n- x\n";
        assert_eq!(rewritten(text), text);
    }

    #[test]
    fn plain_scalars_ending_in_a_colon_before_a_flow_indicator_are_quoted() {
        assert_eq!(
            rewritten("addresses: [1.2.3.4, 2001:db8::, a:b, ::1]\n"),
            "addresses: [1.2.3.4, '2001:db8::', a:b, ::1]\n"
        );
        assert_eq!(rewritten("m: {it's:, k: v}\n"), "m: {'it''s:', k: v}\n");
        // `: ` ends a key as before.
        let text = "m: {2001:db8::: x, \"a\":b}\n";
        assert_eq!(rewritten(text), text);
    }

    #[test]
    fn offsets_map_back() {
        let text = "a: [\nb]\n";
        let r = Rewrite::new(text, &scan(text));
        assert_eq!(r.text, "a: [\n   b]\n");
        assert_eq!(r.original(4), 4);
        assert_eq!(r.original(5), 5);
        assert_eq!(r.original(7), 5);
        assert_eq!(r.original(8), 5);
        assert_eq!(r.original(9), 6);
    }
}
