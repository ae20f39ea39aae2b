//! `sluice version` and `sluice --version`: the same line, with the commit the binary was built
//! from (crates/sluice/build.rs), and `-o json`.

use std::process::Command;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn stdout(args: &[&str]) -> String {
    let out = Command::new(SLUICE)
        .args(args)
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// HEAD's short hash as build.rs reads it, or `None` outside a git checkout.
fn head() -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "-C", env!("CARGO_MANIFEST_DIR")])
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_and_dash_dash_version_print_the_same_line_with_the_commit() {
    let line = stdout(&["version"]);
    assert_eq!(line, stdout(&["--version"]));
    let rest = line
        .strip_prefix(concat!("sluice ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("{line:?}"));
    let commit = rest
        .strip_suffix(")\n")
        .unwrap_or_else(|| panic!("{line:?}"));
    match head() {
        // The hash of HEAD; `-dirty` is as of the build, not necessarily of now.
        Some(hash) => assert_eq!(
            commit.strip_suffix("-dirty").unwrap_or(commit),
            hash,
            "{line:?}"
        ),
        None => assert!(!commit.is_empty(), "{line:?}"),
    }
}

#[test]
fn version_json_has_version_and_commit() {
    let doc: serde_json::Value =
        serde_json::from_str(&stdout(&["version", "-o", "json"])).expect("JSON");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let commit = doc["commit"].as_str().expect("commit");
    assert!(
        stdout(&["version"]).contains(&format!("(commit {commit})")),
        "{doc}"
    );
}
