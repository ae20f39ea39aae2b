//! A text → its documents, split the way `kubectl` splits them.
//!
//! Kubernetes does not let the YAML parser find document boundaries: `YAMLReader` in
//! `k8s.io/apimachinery/pkg/util/yaml` cuts the text on every line whose first three bytes are
//! `---`, before any parsing, and hands each piece to the parser on its own. So a `---` line
//! ends a document wherever it is, even inside a block scalar or a quoted string, and a piece
//! that does not parse fails alone. A `---` line may be followed only by spaces or a `#` comment;
//! anything else (`--- a: b`, `--- |`, `----`) makes `YAMLReader` fail with "invalid Yaml
//! document separator".

/// One piece of a text between separator lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk<'t> {
    /// 1-based line of the piece's first line in the whole text.
    pub first_line: u32,
    pub text: &'t str,
    /// Set when the separator line that starts this piece had content after `---`: its line
    /// and what followed the dashes. Kubernetes refuses such a piece.
    pub bad_separator: Option<(u32, &'t str)>,
}

/// The pieces of `text`, in order; pieces of only blank lines are left out.
pub(super) fn split(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut first_line = 1u32;
    let mut bad_separator = None;
    let mut offset = 0usize;
    for (line_no, line) in (1u32..).zip(text.split_inclusive('\n')) {
        if let Some(rest) = line.strip_prefix("---") {
            push(
                &mut chunks,
                Chunk {
                    first_line,
                    text: &text[start..offset],
                    bad_separator,
                },
            );
            let rest = rest.trim();
            bad_separator = (!rest.is_empty() && !rest.starts_with('#')).then_some((line_no, rest));
            start = offset + line.len();
            first_line = line_no.saturating_add(1);
        }
        offset += line.len();
    }
    push(
        &mut chunks,
        Chunk {
            first_line,
            text: &text[start..],
            bad_separator,
        },
    );
    chunks
}

fn push<'t>(chunks: &mut Vec<Chunk<'t>>, chunk: Chunk<'t>) {
    if !chunk.text.trim().is_empty() || chunk.bad_separator.is_some() {
        chunks.push(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Piece<'t> = (u32, &'t str, Option<(u32, &'t str)>);

    fn pieces(text: &str) -> Vec<Piece<'_>> {
        split(text)
            .into_iter()
            .map(|c| (c.first_line, c.text, c.bad_separator))
            .collect()
    }

    #[test]
    fn separators_are_lines_starting_with_three_dashes() {
        assert_eq!(
            pieces("---\na: 1\n--- # two\nb: 2\n---   \n\n---\nc: |\n  x\n---\n  y\n"),
            [
                (2, "a: 1\n", None),
                (4, "b: 2\n", None),
                (8, "c: |\n  x\n", None),
                (11, "  y\n", None),
            ]
        );
        // Not at the start of the line, or `...`: not a separator.
        assert_eq!(pieces(" ---\n...\n"), [(1, " ---\n...\n", None)]);
    }

    #[test]
    fn content_after_the_dashes_spoils_the_next_piece() {
        assert_eq!(
            pieces("a: 1\n--- b: 2\nc: 3\n----\n"),
            [
                (1, "a: 1\n", None),
                (3, "c: 3\n", Some((2, "b: 2"))),
                (5, "", Some((4, "-"))),
            ]
        );
    }
}
