//! `sluice validate PATH…`: decode and validate files as Istio's admission webhook would.

use std::path::PathBuf;

use sluice_api::{load_paths, validate, Diagnostic};

/// Options of `sluice validate`.
#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files or directories (every *.yaml, *.yml, *.json below them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Every problem found in `paths`, errors and warnings, in file order.
pub fn check(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let loaded = load_paths(paths);
    let mut out = loaded.diagnostics;
    for res in &loaded.resources {
        out.extend(validate(res));
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
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
