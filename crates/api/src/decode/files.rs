//! Which files under the given paths are configuration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::resource::Diagnostic;

use super::file_diagnostic;

/// Extensions of configuration files.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Every configuration file under `paths`, sorted and without duplicates, plus a diagnostic for
/// each path that could not be read.
pub(super) fn collect(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = BTreeSet::new();
    let mut problems = Vec::new();
    // Canonical directories already walked, so a symlink loop cannot recurse forever.
    let mut seen_dirs = BTreeSet::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => walk(path, &mut files, &mut seen_dirs, &mut problems),
            Ok(_) => {
                files.insert(path.clone());
            }
            Err(e) => problems.push(file_diagnostic(path, 0, format!("cannot read: {e}"))),
        }
    }
    (files.into_iter().collect(), problems)
}

fn walk(
    dir: &Path,
    files: &mut BTreeSet<PathBuf>,
    seen_dirs: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<Diagnostic>,
) {
    if let Ok(canonical) = dir.canonicalize() {
        if !seen_dirs.insert(canonical) {
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(file_diagnostic(
                dir,
                0,
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if is_ignored_name(name) {
            continue;
        }
        // `metadata` follows symlinks: ConfigMap volumes expose files as links into `..data`.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, files, seen_dirs, problems),
            Ok(_) if is_config_file(name) => {
                files.insert(path);
            }
            Ok(_) => {}
            // A dangling symlink (e.g. during a ConfigMap update) is not worth an error.
            Err(_) => {}
        }
    }
}

/// Hidden entries and editor leftovers (`.#x.yaml`, `x.yaml~`, `#x.yaml#`, `x.yaml.swp`).
pub(super) fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swo")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
}

fn is_config_file(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_ignored_name(".#vs.yaml"));
        assert!(is_ignored_name("vs.yaml~"));
        assert!(is_ignored_name(".vs.yaml.swp"));
        assert!(is_ignored_name("..data"));
        assert!(!is_ignored_name("vs.yaml"));
        assert!(is_config_file("a.YAML"));
        assert!(is_config_file("a.json"));
        assert!(!is_config_file("a.txt"));
    }
}
