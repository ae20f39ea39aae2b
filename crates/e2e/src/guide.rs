//! The guides in `docs/` as runnable scripts, so they cannot drift from the code.
//!
//! A guide's ```` ```sh ```` blocks are what a reader types, in order; every other block
//! (```` ```yaml ````, ```` ```text ````, ```` ```console ````) is shown, not run. The blocks are
//! joined into one bash script. A command line that ends in `# expect: TEXT` is checked: its
//! output (stdout and stderr) must contain `TEXT`. Because a config change applies within a second,
//! and a reader's next command comes later than a script's, the command is re-run until it does,
//! for up to [`EXPECT_WITHIN_SECS`] seconds. The script stops at the first expectation that fails and
//! names the guide's file and line.

use std::fmt::Write as _;

/// How long an `# expect:` line may take to become true (a config change, a process starting).
pub const EXPECT_WITHIN_SECS: u32 = 20;

/// The marker the script prints as its last line: the guide ran to its end.
pub const GUIDE_DONE: &str = "== guide ran to its end ==";

/// One line of a runnable block, with its line number in the guide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuideLine {
    pub line: usize,
    pub text: String,
}

/// The lines of the guide's ```` ```sh ```` blocks, in order.
pub fn runnable_lines(markdown: &str) -> Vec<GuideLine> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut in_other = false;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            if in_sh || in_other {
                in_sh = false;
                in_other = false;
            } else if info.trim() == "sh" {
                in_sh = true;
            } else {
                in_other = true;
            }
            continue;
        }
        if in_sh {
            out.push(GuideLine {
                line: i + 1,
                text: line.to_string(),
            });
        }
    }
    out
}

/// The expected text of a line ending in `# expect: TEXT`, and the command before it.
fn split_expect(text: &str) -> Option<(&str, &str)> {
    let at = text.rfind("# expect:")?;
    let expected = text[at + "# expect:".len()..].trim();
    let command = text[..at].trim_end();
    (!expected.is_empty() && !command.is_empty()).then_some((command, expected))
}

/// The heredoc delimiter a line opens (`<<EOF`, `<<'EOF'`, `<<-"EOF"`), if any.
fn heredoc_delimiter(text: &str) -> Option<String> {
    let at = text.find("<<")?;
    let rest = text[at + 2..].trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that runs `lines` of guide `guide` (its file name, for messages).
pub fn script(guide: &str, lines: &[GuideLine]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"# generated from {guide}: its ```sh blocks, with `# expect:` lines checked
__expect() {{ # LINE EXPECTED COMMAND
  local line=$1 expected=$2 cmd=$3 out="" deadline=$((SECONDS + {EXPECT_WITHIN_SECS}))
  while :; do
    out=$(eval "$cmd" 2>&1)
    case "$out" in *"$expected"*) printf '%s\n' "$out"; return 0;; esac
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.5
  done
  printf '%s\n' "$out"
  printf '\n{guide}:%s: `%s` did not print %s within {EXPECT_WITHIN_SECS}s\n' "$line" "$cmd" "$expected" >&2
  exit 1
}}"#
    );
    let mut heredoc: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for l in lines {
        if let Some(delim) = &heredoc {
            let _ = writeln!(s, "{}", l.text);
            if l.text.trim() == delim {
                heredoc = None;
            }
            continue;
        }
        // A command continued with `\` is joined, so an expectation covers all of it.
        let (start, joined) = match pending.take() {
            Some((start, mut acc)) => {
                acc.push('\n');
                acc.push_str(&l.text);
                (start, acc)
            }
            None => (l.line, l.text.clone()),
        };
        if joined.ends_with('\\') {
            pending = Some((start, joined));
            continue;
        }
        heredoc = heredoc_delimiter(&joined);
        let _ = writeln!(s, "echo {}", shell_quote(&format!("$ {joined}")));
        match split_expect(&joined) {
            Some((command, expected)) if heredoc.is_none() => {
                let _ = writeln!(
                    s,
                    "__expect {start} {} {}",
                    shell_quote(expected),
                    shell_quote(command)
                );
            }
            _ => {
                let _ = writeln!(s, "{joined}");
            }
        }
    }
    if let Some((_, rest)) = pending {
        let _ = writeln!(s, "{rest}");
    }
    let _ = writeln!(s, "echo {}", shell_quote(GUIDE_DONE));
    s
}

/// How many `# expect:` checks the guide's runnable blocks hold.
pub fn expectations(lines: &[GuideLine]) -> usize {
    lines
        .iter()
        .filter(|l| split_expect(&l.text).is_some())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# T\n\n```sh\necho hi   # expect: hi\n```\n\n```yaml\na: b\n```\n\n```sh\ncat > f <<'EOF'\nx: 1 # expect: nothing\nEOF\ncurl -s \\\n  http://x   # expect: 200\n```\n";

    #[test]
    fn only_sh_blocks_are_run_with_their_line_numbers() {
        let lines = runnable_lines(DOC);
        let texts: Vec<_> = lines.iter().map(|l| (l.line, l.text.as_str())).collect();
        assert_eq!(
            texts,
            [
                (4, "echo hi   # expect: hi"),
                (12, "cat > f <<'EOF'"),
                (13, "x: 1 # expect: nothing"),
                (14, "EOF"),
                (15, "curl -s \\"),
                (16, "  http://x   # expect: 200"),
            ]
        );
    }

    #[test]
    fn expectations_become_checks_but_heredoc_bodies_stay_as_written() {
        let s = script("t.md", &runnable_lines(DOC));
        assert!(s.contains("__expect 4 'hi' 'echo hi'"), "{s}");
        assert!(s.contains("\nx: 1 # expect: nothing\nEOF\n"), "{s}");
        assert!(
            s.contains("__expect 15 '200' 'curl -s \\\n  http://x'"),
            "{s}"
        );
        assert!(s.trim_end().ends_with(&shell_quote(GUIDE_DONE)), "{s}");
    }

    #[test]
    fn a_generated_script_fails_with_the_guide_line_when_an_expectation_is_not_met() {
        let lines = runnable_lines("```sh\necho one   # expect: two\n```\n");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script("g.md", &lines).replace("SECONDS + 20", "SECONDS + 1"))
            .output()
            .expect("bash runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("g.md:2: `echo one` did not print two"),
            "{stderr}"
        );
    }
}
