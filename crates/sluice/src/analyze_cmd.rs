//! `sluice analyze PATH…`: `istioctl analyze` for files. Decoding and webhook validation
//! problems become IST0106 (errors) and IST0133 (warnings); then the whole-config analyzers of
//! [`sluice_model::analyze`] run over the resources that would be served.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::json;
use sluice_api::{load_paths, validate, Diagnostic, Severity};
use sluice_model::analyze::{self, Level, Message, CODES, SKIPPED};

/// istioctl's exit status when analyzers found errors (`sysexits.go`).
pub const EXIT_ISSUES: i32 = 79;

/// Printed after the options in `sluice analyze --help`.
pub const AFTER_HELP: &str = "\
Codes: Istio's IST codes, levels and message texts (istioctl analyze), plus sluice's own:
  SLU0001 [Warning] DestinationPortPinnedToOnlyServiceEntryPort: an HTTP route names a
          ServiceEntry host without a port and the ServiceEntry declares one port that is not
          the protocol's usual one (80 for HTTP, 443 for HTTPS/TLS): every request for the host
          goes to that port, whatever port the client called, so clients calling the usual port
          fail. Istio has no analyzer for this.
  SLU0002 [Warning] CertificateFileUnusable: a Gateway server (serverCertificate, privateKey,
          caCertificates) or DestinationRule TLS setting (clientCertificate, privateKey,
          caCertificates) names a file that does not exist, cannot be read, or is not a regular
          file on the machine where the command runs (run it on the proxy's host): the gateway is
          not ready, or TLS origination fails, until the file can be read.

Not checked, because sluice has no Pods: a Gateway selector that matches no Pod (IST0101
selector); gateway proxies are `sluice gateway --labels`, which the files do not list.
Subsets (IST0173) are matched against the endpoints the files declare (WorkloadEntries,
ServiceEntry endpoints, Endpoints), not Pods.

Exit status: 79 when any Error is reported, else 0. Use --list-analyzers for every code.";

/// Output formats, as istioctl's `-o`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Log,
    Json,
    Yaml,
}

/// Options of `sluice analyze`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// Files or directories (every *.yaml, *.yml, *.json below them).
    #[arg(required_unless_present = "list_analyzers")]
    pub paths: Vec<PathBuf>,
    /// Output format: log lines (istioctl's default), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value = "log")]
    pub output: OutputFormat,
    /// List every message code with its level and meaning, and the checks that are skipped.
    #[arg(short = 'L', long)]
    pub list_analyzers: bool,
}

/// Every message for `paths`, sorted by level, code and resource; a message repeated through a
/// resource is given a few times, then summed up (`… and N more like this`).
pub fn check(paths: &[PathBuf]) -> Vec<Message> {
    let loaded = load_paths(paths);
    let mut diags: Vec<Diagnostic> = loaded.diagnostics;
    let mut served = Vec::with_capacity(loaded.resources.len());
    // The first definition of a resource wins, as in the proxies' config store.
    let mut seen: HashMap<(sluice_api::Kind, String, String), String> = HashMap::new();
    for res in loaded.resources {
        let problems = validate(&res);
        let refused = problems.iter().any(Diagnostic::is_error);
        diags.extend(problems);
        if refused {
            continue;
        }
        let key = (res.kind, res.meta.namespace.clone(), res.meta.name.clone());
        if let Some(first) = seen.get(&key) {
            diags.push(Diagnostic::at(
                &res,
                Severity::Warning,
                "metadata.name",
                format!(
                    "{} {} is also defined in {first}; that definition is used",
                    res.kind,
                    res.key()
                ),
            ));
            continue;
        }
        seen.insert(key, res.origin.file.display().to_string());
        served.push(res);
    }
    served.sort_by(sluice_model::snapshot::creation_order);
    let mut out: Vec<Message> = diags.iter().map(analyze::from_diagnostic).collect();
    out.extend(analyze::analyze(&served));
    out.extend(analyze::certificate_file_messages(
        &served,
        crate::validate_cmd::check_file,
    ));
    analyze::sort(&mut out);
    analyze::summarize(out, sluice_api::diagnostics::MAX_ALIKE)
}

/// The JSON form of the messages, with istioctl's field names.
pub fn to_json(messages: &[Message]) -> serde_json::Value {
    serde_json::Value::Array(
        messages
            .iter()
            .map(|m| {
                json!({
                    "code": m.code,
                    "level": m.level.as_str(),
                    "origin": m.origin.clone().unwrap_or_default(),
                    "reference": m.reference(),
                    "message": m.text,
                    "documentationUrl": m.documentation_url().unwrap_or_default(),
                })
            })
            .collect(),
    )
}

/// The YAML form: a list of the JSON objects (strings double-quoted, which YAML reads as JSON).
pub fn to_yaml(messages: &[Message]) -> String {
    let serde_json::Value::Array(items) = to_json(messages) else {
        return "[]\n".into();
    };
    if items.is_empty() {
        return "[]\n".into();
    }
    let mut out = String::new();
    for item in items {
        let serde_json::Value::Object(map) = item else {
            continue;
        };
        let mut first = true;
        for (k, v) in map {
            out.push_str(if first { "- " } else { "  " });
            first = false;
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    out
}

fn list_analyzers() {
    println!("Codes reported by sluice analyze:");
    for c in CODES {
        println!("  {} [{}] {}: {}", c.code, c.level, c.name, c.description);
    }
    println!("\nIstio checks not made:");
    for (what, why) in SKIPPED {
        println!("  {what}: {why}");
    }
}

/// Prints the messages; returns 79 if any is an error, else 0.
pub fn run(args: &AnalyzeArgs) -> i32 {
    if args.list_analyzers {
        list_analyzers();
        return 0;
    }
    let messages = check(&args.paths);
    let errors = messages.iter().any(|m| m.level == Level::Error);
    let what: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
    let what = what.join(", ");
    match args.output {
        OutputFormat::Log => {
            for m in &messages {
                println!("{m}");
            }
            if errors {
                eprintln!("Error: Analyzers found issues when analyzing {what}.");
                eprintln!(
                    "See https://istio.io/latest/docs/reference/config/analysis for more information about causes and resolutions."
                );
            } else if messages.is_empty() {
                eprintln!("\u{2714} No validation issues found when analyzing {what}.");
            }
        }
        OutputFormat::Json => {
            let v = to_json(&messages);
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into())
            );
        }
        OutputFormat::Yaml => print!("{}", to_yaml(&messages)),
    }
    if errors {
        EXIT_ISSUES
    } else {
        0
    }
}
