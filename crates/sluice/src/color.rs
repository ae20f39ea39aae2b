//! Whether sluice may colour what it prints: only for a person at a terminal. Output piped to a
//! file, a pager without `-R` or a log collector gets no escape codes, and neither does anyone
//! who set `NO_COLOR` (no-color.org) or whose terminal is `TERM=dumb`. clap's own help follows
//! the same rules (anstream).

use std::io::IsTerminal;

/// Where the coloured text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// True when text written to `stream` may carry ANSI colour codes.
pub fn enabled(stream: Stream) -> bool {
    let is_terminal = match stream {
        Stream::Stdout => std::io::stdout().is_terminal(),
        Stream::Stderr => std::io::stderr().is_terminal(),
    };
    is_terminal && allowed_by_env(|name| std::env::var_os(name))
}

/// The environment's say, apart from the terminal check: `NO_COLOR` set to anything but the empty
/// string, or `TERM=dumb`, turns colour off.
fn allowed_by_env(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let no_color = var("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = var("TERM").is_some_and(|t| t.eq_ignore_ascii_case("dumb"));
    !no_color && !dumb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn no_color_and_dumb_terminals_turn_colour_off() {
        assert!(allowed_by_env(env(&[])));
        assert!(allowed_by_env(env(&[("TERM", "xterm-256color")])));
        // An empty NO_COLOR is as if unset (no-color.org).
        assert!(allowed_by_env(env(&[("NO_COLOR", "")])));
        assert!(!allowed_by_env(env(&[("NO_COLOR", "1")])));
        assert!(!allowed_by_env(env(&[("TERM", "dumb")])));
    }
}
