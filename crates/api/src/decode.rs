//! YAML/JSON text → typed [`Resource`]s with the line of every field.
//!
//! The pipeline, one module per step:
//! - [`yaml`]: text → one JSON value per document, plus a field-path → line table;
//! - [`kinds`]: `kind`/`apiVersion` dispatch, metadata, and the typed spec of each kind
//!   (decoded by [`typed`], which turns serde failures into field paths and readable messages);
//! - [`legacy`]: pre-1.0 forms the seeds use, accepted with a warning;
//! - [`files`]: which files under a directory are configuration.

mod files;
mod kinds;
mod legacy;
mod typed;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::resource::{Diagnostic, Resource, Severity};

pub use files::{list_config_files, read_config_file, Listing, MAX_FILE_BYTES};
pub use kinds::decode_mesh_file;
pub use yaml::{
    parse_documents, Document, Positions, YamlError, MAX_ALIAS_NODES, MAX_DEPTH, MAX_OBJECT_BYTES,
    MAX_TEXT_BYTES,
};

/// Resources and problems found while loading files.
///
/// A document with an error is left out of `resources` (its errors are in `diagnostics`); the
/// other documents of the same file are still returned. Warnings never drop a resource.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Decoded resources, in file order (files sorted by path).
    pub resources: Vec<Resource>,
    /// Errors and warnings, in the order they were found.
    pub diagnostics: Vec<Diagnostic>,
    /// Valid documents of Istio kinds sluice validates but does not enforce (EnvoyFilter,
    /// WasmPlugin, …): they are not in `resources`, since nothing serves them. A valid Telemetry
    /// is in `resources` instead, as [`Kind::Telemetry`](crate::Kind::Telemetry) or
    /// [`Kind::RequestAuthentication`](crate::Kind::RequestAuthentication), and not counted here:
    /// proxies enforce them.
    pub unenforced: usize,
}

impl LoadResult {
    /// True when some diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    fn extend(&mut self, other: LoadResult) {
        self.resources.extend(other.resources);
        self.diagnostics.extend(other.diagnostics);
        self.unenforced += other.unenforced;
    }
}

/// Decodes every document of one file's text. `file` is only used in diagnostics and origins.
///
/// Documents are read as `kubectl` reads them (see [`yaml`]): the text is cut on `---` lines
/// and each piece is parsed alone, so a document with a YAML error is reported (at its line in
/// the file) and left out, and every other document is still decoded. All the errors of the
/// text are reported in one run.
pub fn decode_str(file: &Path, text: &str) -> LoadResult {
    let file: Arc<Path> = Arc::from(file);
    let mut out = LoadResult::default();
    for doc in yaml::read_documents(text) {
        match doc {
            Ok(doc) => kinds::decode_document(doc, &file, &mut out),
            Err(e) => out
                .diagnostics
                .push(file_diagnostic(&file, e.line, e.message)),
        }
    }
    // The store keeps these for recompiles; a Vec that doubled while decoding would keep up to
    // twice the resources' size.
    out.resources.shrink_to_fit();
    out
}

/// Reads and decodes one file. A file that cannot be read (missing, not a regular file, too
/// large) is reported as a diagnostic.
pub fn decode_file(file: &Path) -> LoadResult {
    match read_config_file(file) {
        Ok(bytes) => decode_bytes(file, bytes),
        Err(message) => LoadResult {
            diagnostics: vec![file_diagnostic(file, 0, message)],
            ..LoadResult::default()
        },
    }
}

/// Decodes the bytes read from `file`.
pub fn decode_bytes(file: &Path, bytes: Vec<u8>) -> LoadResult {
    match String::from_utf8(bytes) {
        Ok(text) => decode_str(file, &text),
        Err(_) => LoadResult {
            diagnostics: vec![file_diagnostic(
                file,
                1,
                "file is not valid UTF-8 text".to_string(),
            )],
            ..LoadResult::default()
        },
    }
}

/// Decodes every `*.yaml`, `*.yml`, `*.json` file under the given files or directories.
///
/// Directories are searched recursively, skipping hidden entries (which also skips the `..data`
/// indirection of Kubernetes ConfigMap volumes) and editor temporary files; files are decoded in
/// sorted path order so results are deterministic. A path given explicitly is decoded whatever
/// its extension. Whatever cannot be read (a directory without permission, a FIFO, a symlink
/// loop) is reported.
pub fn load_paths(paths: &[PathBuf]) -> LoadResult {
    let mut out = LoadResult::default();
    let listing = list_config_files(paths);
    out.diagnostics.extend(listing.diagnostics());
    for file in &listing.files {
        out.extend(decode_file(file));
    }
    out.resources.shrink_to_fit();
    out
}

/// A diagnostic about a whole file (syntax error, unreadable file).
fn file_diagnostic(file: &Path, line: u32, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.display().to_string(),
        line,
        resource: None,
        field: String::new(),
        message,
    }
}
