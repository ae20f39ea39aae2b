//! `sluice validate PATH…`: decode and validate files as Istio's admission webhook would.

use std::path::{Path, PathBuf};

use sluice_api::diagnostics::{summarize, MAX_ALIKE};
use sluice_api::{load_paths, validate, Diagnostic};
use sluice_model::analyze::{certificate_file_diagnostics, FileProblem};

/// Options of `sluice validate`.
#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files or directories (every *.yaml, *.yml, *.json below them).
    pub paths: Vec<PathBuf>,
    /// A file or directory to check, as `istioctl validate -f` takes it (repeatable; may be
    /// combined with PATHS).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filenames: Vec<PathBuf>,
}

impl ValidateArgs {
    /// Every path given, `-f` ones first.
    fn all_paths(&self) -> Vec<PathBuf> {
        self.filenames
            .iter()
            .chain(self.paths.iter())
            .cloned()
            .collect()
    }
}

/// Every problem found in `paths`, errors and warnings, in file order: decoding, each
/// resource's own validation, then references between the resources that would be served
/// (routes to unknown hosts or undefined subsets, …) and certificate files that cannot be read
/// here, which are warnings. A mistake repeated
/// through a resource is reported a few times, then summed up (`… and N more like this`).
pub fn check(paths: &[PathBuf]) -> Vec<Diagnostic> {
    check_counted(paths).0
}

/// [`check`], and how many resources were read (those of kinds sluice does not enforce too).
fn check_counted(paths: &[PathBuf]) -> (Vec<Diagnostic>, usize) {
    let loaded = load_paths(paths);
    let count = loaded.resources.len() + loaded.unenforced;
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
    (summarize(out, MAX_ALIKE), count)
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

/// Prints one line per problem, then a one-line summary when nothing is wrong (or nothing was
/// found); the exit code is 1 if any problem is an error (or no path was given).
pub fn run(args: &ValidateArgs) -> i32 {
    let paths = args.all_paths();
    if paths.is_empty() {
        eprintln!("sluice validate: nothing to check: give files or directories (sluice validate -f FILE, or sluice validate PATH...)");
        return 1;
    }
    let (diags, resources) = check_counted(&paths);
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        return 1;
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let warnings = diags.len();
    match resources {
        0 if warnings == 0 => println!("no resources found in {}", shown.join(", ")),
        0 => println!("no resources to validate in {}", shown.join(", ")),
        n => {
            let noun = if n == 1 { "resource" } else { "resources" };
            match warnings {
                0 => println!("✔ {n} {noun} valid"),
                1 => println!("✔ {n} {noun} valid, 1 warning"),
                w => println!("✔ {n} {noun} valid, {w} warnings"),
            }
        }
    }
    0
}
