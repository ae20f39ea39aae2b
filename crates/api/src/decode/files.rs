//! Which files under the given paths are configuration, and reading one without ever blocking.
//!
//! A config directory is written by people and tools we do not control: it may hold a FIFO, a
//! link to `/dev/zero`, a file nobody may read, a directory that links to its parent. Each of
//! those is reported (never skipped silently) and none of them may block or exhaust the reader:
//! only regular files are read, opened non-blocking and read up to [`MAX_FILE_BYTES`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::resource::Diagnostic;

use super::file_diagnostic;

/// Extensions of configuration files.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Largest configuration file read. Kubernetes refuses request bodies over 3 MiB, so no real
/// resource comes near; a folder may still hold a `kind: List` of thousands of resources in one
/// file, hence the margin. A larger file is refused, not read in part.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The configuration files under some paths, and what could not be looked at.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Every entry whose name makes it a configuration file, sorted, without duplicates. Entries
    /// that turn out not to be readable regular files are included: [`read_config_file`] says why.
    pub files: Vec<PathBuf>,
    /// Paths that could not be inspected (a directory that cannot be listed, an entry whose type
    /// cannot be read), with the reason. Files that were known under them are still there.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Harmless oddities worth a warning (a directory reached twice through a symlink).
    pub warnings: Vec<(PathBuf, String)>,
}

impl Listing {
    /// True when `file` may have been hidden by an entry that could not be inspected.
    pub fn may_hide(&self, file: &Path) -> bool {
        self.unreadable
            .iter()
            .any(|(dir, _)| file.starts_with(dir) && file != dir)
    }

    /// The unreadable entries and warnings as diagnostics.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let errors = self
            .unreadable
            .iter()
            .map(|(path, why)| file_diagnostic(path, 0, why.clone()));
        let warnings = self.warnings.iter().map(|(path, why)| Diagnostic {
            severity: crate::Severity::Warning,
            ..file_diagnostic(path, 0, why.clone())
        });
        errors.chain(warnings).collect()
    }
}

/// Every configuration file under `paths`. Directories are searched recursively, skipping hidden
/// entries (which also skips the `..data` indirection of Kubernetes ConfigMap volumes) and
/// editor leftovers; a path given explicitly is a configuration file whatever its extension.
pub fn list_config_files(paths: &[PathBuf]) -> Listing {
    let mut files = BTreeSet::new();
    let mut out = Listing::default();
    // Canonical directories already walked, so a symlink loop cannot recurse forever.
    let mut seen_dirs = BTreeSet::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => walk(path, &mut files, &mut seen_dirs, &mut out),
            Ok(_) => {
                files.insert(path.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && is_dangling_link(path) => {
                files.insert(path.clone());
            }
            Err(e) => out
                .unreadable
                .push((path.clone(), format!("cannot read: {}", describe(&e)))),
        }
    }
    out.files = files.into_iter().collect();
    out
}

fn walk(
    dir: &Path,
    files: &mut BTreeSet<PathBuf>,
    seen_dirs: &mut BTreeSet<PathBuf>,
    out: &mut Listing,
) {
    match dir.canonicalize() {
        Ok(canonical) => {
            if seen_dirs.contains(&canonical) {
                out.warnings.push((
                    dir.to_path_buf(),
                    format!(
                        "directory {} is reached twice (a symlink loop?); its files are read once",
                        canonical.display()
                    ),
                ));
                return;
            }
            seen_dirs.insert(canonical);
        }
        Err(e) => {
            out.unreadable.push((
                dir.to_path_buf(),
                format!("cannot read directory: {}", describe(&e)),
            ));
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.unreadable.push((
                dir.to_path_buf(),
                format!("cannot read directory: {}", describe(&e)),
            ));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.unreadable.push((
                    dir.to_path_buf(),
                    format!("cannot read directory: {}", describe(&e)),
                ));
                return;
            }
        };
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if is_ignored_name(name) {
            continue;
        }
        // `metadata` follows symlinks: ConfigMap volumes expose files as links into `..data`.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, files, seen_dirs, out),
            // Whatever the type: reading says why a FIFO or a device is not configuration.
            Ok(_) if is_config_file(name) => {
                files.insert(path);
            }
            Ok(_) => {}
            // A config-named entry that cannot be followed (dangling link, link loop, no
            // permission): reading it reports the reason and keeps its last good version.
            Err(_) if is_config_file(name) => {
                files.insert(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // An entry that may be a directory but cannot be followed hides what is under it.
            Err(e) => out
                .unreadable
                .push((path, format!("cannot read: {}", describe(&e)))),
        }
    }
}

fn is_dangling_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Reads one configuration file: a regular file (symlinks followed) of at most
/// [`MAX_FILE_BYTES`]. Never blocks on a FIFO or a device and never reads without bound. The
/// error is a message for the user (`not a regular file (a FIFO)`).
pub fn read_config_file(path: &Path) -> Result<Vec<u8>, String> {
    // Refuse what is not a regular file before opening: opening some devices has effects.
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    // Non-blocking: if the entry was swapped for a FIFO since, `open` still returns at once.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| read_error(path, &e))?;
    let meta = file.metadata().map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never read more than the bound.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, &e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn too_large(len: u64) -> String {
    format!(
        "file too large ({len} bytes; at most {MAX_FILE_BYTES} bytes are read): split it into several files"
    )
}

fn not_regular(kind: &std::fs::FileType) -> String {
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    };
    format!("not a regular file ({what}); only regular files are read")
}

fn read_error(path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound && is_dangling_link(path) {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return format!(
            "cannot read file: dangling symlink to {target} (remove the link to withdraw its resources)"
        );
    }
    format!("cannot read file: {}", describe(e))
}

/// An I/O error in words, naming the symlink loop that `ELOOP` means.
fn describe(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return format!("symlink loop ({e})");
    }
    e.to_string()
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
