//! Embeds the build's commit in the binary, for `sluice version` and `sluice --version`, as
//! `SLUICE_BUILD_COMMIT`: the short hash of HEAD with `-dirty` when tracked files differ from it,
//! read with git when the sources are a git checkout; else `$SLUICE_COMMIT` (the Dockerfile passes
//! it as a build argument, since .git is not in the image's build context); else `unknown`.
//!
//! The script reruns only when HEAD moves (a commit, a checkout) or `$SLUICE_COMMIT` changes, not
//! on every edit, so builds stay incremental: `-dirty` tells the state of the tree when HEAD last
//! moved or the script last ran for another reason (a clean build always reruns it).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Hash length: stable across runs (git's automatic length grows with the repository).
const SHORT: &str = "--short=12";

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_COMMIT");
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match from_git(&dir) {
        Some((commit, watched)) => {
            for path in watched {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            commit
        }
        None => from_env().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=SLUICE_BUILD_COMMIT={commit}");
}

/// `$SLUICE_COMMIT`, checked: the value ends up in a `cargo:` line and in JSON output.
fn from_env() -> Option<String> {
    let value = env::var("SLUICE_COMMIT").ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let plain = value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if !plain {
        panic!(
            "SLUICE_COMMIT={value:?}: expected a commit such as 3b46826c1a2b or 3b46826c1a2b-dirty \
             (at most 64 of A-Z a-z 0-9 . _ + -)"
        );
    }
    Some(value.to_string())
}

/// The commit and the files whose change means HEAD moved, or `None` when `dir` is not in a git
/// checkout or git cannot be run.
fn from_git(dir: &Path) -> Option<(String, Vec<PathBuf>)> {
    let hash = git(dir, &["rev-parse", SHORT, "HEAD"])?;
    // Tracked files only: an untracked scratch file does not make the build differ from HEAD.
    // --no-optional-locks: a build never rewrites the index of the tree it builds.
    let status = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )?;
    let commit = if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    };
    // HEAD itself (a checkout), the branch it points to (a commit), and packed-refs (where the
    // branch lives after `git pack-refs`). Only existing files: cargo reruns a script on every
    // build while a watched path is missing.
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    let watched = names
        .iter()
        .filter_map(|name| {
            let path = git(dir, &["rev-parse", "--git-path", name])?;
            let path = dir.join(path);
            path.is_file().then_some(path)
        })
        .collect();
    Some((commit, watched))
}

/// Runs git in `dir` and returns its trimmed output, or `None` if it failed. safe.directory: a
/// checkout owned by another user (a container's bind mount) is still read.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-c")
        .arg("safe.directory=*")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
