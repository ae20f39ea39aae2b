//! `sluice version` (and `sluice --version`, which prints the same line): the release and the
//! commit the binary was built from, embedded by build.rs.

/// The release, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit: a 12-digit short hash, `-dirty` when tracked files differed from it, or what
/// `$SLUICE_COMMIT` said where the sources were not a git checkout, else `unknown` (build.rs).
pub const COMMIT: &str = env!("SLUICE_BUILD_COMMIT");

/// What follows "sluice " in `sluice --version` and `sluice version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLUICE_BUILD_COMMIT"),
    ")"
);

/// Options of `sluice version`.
#[derive(clap::Args, Debug)]
pub struct VersionArgs {
    /// Output format: one line as `--version` prints it (short), or JSON
    /// (`{"version": …, "commit": …}`).
    #[arg(short = 'o', long = "output", value_enum, default_value = "short")]
    pub output: VersionFormat,
}

/// `-o` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionFormat {
    Short,
    Json,
}

/// Prints the version to stdout.
pub fn run(args: &VersionArgs) -> anyhow::Result<()> {
    print!("{}", render(args.output));
    Ok(())
}

/// The text `sluice version -o FORMAT` prints, newline included.
pub fn render(format: VersionFormat) -> String {
    match format {
        VersionFormat::Short => format!("sluice {LONG_VERSION}\n"),
        VersionFormat::Json => {
            let doc = serde_json::json!({ "version": VERSION, "commit": COMMIT });
            format!("{doc:#}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_is_one_line_with_version_and_commit() {
        let line = render(VersionFormat::Short);
        assert_eq!(line, format!("sluice {VERSION} (commit {COMMIT})\n"));
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn json_has_version_and_commit() {
        let doc: serde_json::Value = serde_json::from_str(&render(VersionFormat::Json)).unwrap();
        assert_eq!(doc["version"], VERSION);
        assert_eq!(doc["commit"], COMMIT);
    }

    #[test]
    fn commit_is_a_hash_or_a_plain_token() {
        // build.rs: a short hash (+ -dirty) from git, a checked $SLUICE_COMMIT, or "unknown".
        assert!(!COMMIT.is_empty());
        assert!(
            COMMIT
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')),
            "{COMMIT:?}"
        );
    }
}
