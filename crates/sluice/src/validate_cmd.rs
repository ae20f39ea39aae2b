//! `sluice validate PATH…`: decode and validate files as Istio's admission webhook would.

use std::path::{Path, PathBuf};

use sluice_api::diagnostics::{summarize, MAX_ALIKE};
use sluice_api::{load_paths, validate, Diagnostic};
use sluice_model::analyze::{certificate_file_diagnostics, FileProblem};

/// Options of `sluice validate`.
#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files or directories (every *.yaml, *.yml, *.json below them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Every problem found in `paths`, errors and warnings, in file order: decoding, each
/// resource's own validation, then references between the resources that would be served
/// (routes to unknown hosts or undefined subsets, …) and certificate files that cannot be read
/// here, which are warnings. A mistake repeated
/// through a resource is reported a few times, then summed up (`… and N more like this`).
pub fn check(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let loaded = load_paths(paths);
    let mut out = loaded.diagnostics;
    let mut served = Vec::with_capacity(loaded.resources.len());
    for res in loaded.resources {
        let diags = validate(&res);
        if !diags.iter().any(Diagnostic::is_error) {
            served.push(res);
        }
        out.extend(diags);
    }
    out.extend(sluice_model::references::check(&served));
    out.extend(certificate_file_diagnostics(&served, check_file));
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    summarize(out, MAX_ALIKE)
}

/// Whether a proxy on this machine could read the certificate, key or CA file at `path`: a
/// regular file (symbolic links followed) that opens for reading. A FIFO or device is never
/// opened, so looking never blocks.
pub fn check_file(path: &Path) -> Result<(), FileProblem> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileProblem::Missing),
        Err(e) => return Err(FileProblem::Unreadable(reason(&e))),
    };
    if !meta.is_file() {
        return Err(FileProblem::NotRegular);
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| FileProblem::Unreadable(reason(&e)))
}

/// The system's words for an I/O error, without the error number (`Permission denied`).
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Prints one line per problem; the exit code is 1 if any is an error.
pub fn run(args: &ValidateArgs) -> i32 {
    let diags = check(&args.paths);
    for d in &diags {
        println!("{d}");
    }
    if diags.iter().any(Diagnostic::is_error) {
        1
    } else {
        0
    }
}
