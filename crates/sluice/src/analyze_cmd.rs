//! `sluice analyze PATH…`: `istioctl analyze --use-kube=false` for files, with its flags, output
//! and exit codes. Decoding and webhook validation problems become IST0106 (errors) and IST0133
//! (warnings); then the whole-config analyzers of [`sluice_model::analyze`] run over every
//! resource that was read, valid or not, as Istio's analyzers do: a Gateway refused for one
//! field is still the Gateway its VirtualServices name.
//!
//! What istioctl does and sluice matches (istioctl/pkg/analyze/analyze.go,
//! pkg/config/analysis/local): resources without a namespace are put in `-n` (default
//! `default`); without `-A` only messages about resources in that namespace (or about no
//! namespace) are printed; `--suppress "CODE=Kind ns/name"` (with `*` wildcards) and the
//! `galley.istio.io/analyze-suppress` annotation drop messages; `--output-threshold` filters what
//! is printed and `--failure-threshold` decides exit 79, on the messages before the output
//! filter. A document Istio's decoder cannot read (a value of the wrong type) is left out; an
//! unknown field, which Istio's decoder ignores, is reported and the resource kept without it.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_api::decode::{list_config_files, read_config_file};
use sluice_api::{decode_str, validate, Diagnostic, Kind, LoadResult, Resource, Severity};
use sluice_model::analyze::{self, Level, Message, CODES, SKIPPED};

/// istioctl's exit status when analyzers found issues at or above the failure threshold
/// (`sysexits.go`).
pub const EXIT_ISSUES: i32 = 79;

/// Where Istio documents each code (`url.ConfigAnalysis`, unversioned).
const CONFIG_ANALYSIS_URL: &str = "https://istio.io/latest/docs/reference/config/analysis";

/// The annotation with which a resource silences codes about itself (`*` for all).
const SUPPRESS_ANNOTATION: &str = "galley.istio.io/analyze-suppress";

/// Every code istioctl knows (`pkg/config/analysis/msg/messages.yaml`): suppressing one of these
/// is not warned about, even when sluice never reports it.
const ISTIO_CODES: &[&str] = &[
    "IST0001", "IST0002", "IST0101", "IST0102", "IST0103", "IST0106", "IST0107", "IST0108",
    "IST0109", "IST0110", "IST0111", "IST0112", "IST0116", "IST0118", "IST0123", "IST0125",
    "IST0126", "IST0127", "IST0128", "IST0129", "IST0130", "IST0131", "IST0132", "IST0133",
    "IST0134", "IST0135", "IST0136", "IST0137", "IST0138", "IST0139", "IST0140", "IST0141",
    "IST0142", "IST0143", "IST0144", "IST0145", "IST0146", "IST0147", "IST0148", "IST0149",
    "IST0150", "IST0151", "IST0152", "IST0153", "IST0154", "IST0155", "IST0156", "IST0157",
    "IST0158", "IST0159", "IST0160", "IST0161", "IST0162", "IST0163", "IST0164", "IST0165",
    "IST0166", "IST0167", "IST0168", "IST0169", "IST0170", "IST0171", "IST0172", "IST0173",
    "IST0174", "IST0175", "IST0176", "IST0177",
];

/// Printed after the options in `sluice analyze --help`.
pub const AFTER_HELP: &str = "\
Flags are istioctl analyze's. sluice never reads a cluster: files are analyzed on their own,
as `istioctl analyze --use-kube=false` does, whatever --use-kube says. `-` reads standard input.
Directories are always searched recursively (istioctl removed -R and recurses always; sluice
accepts -R and says so). A file named on the command line whose name does not end in .json,
.yaml or .yml is skipped with a note, as istioctl does. Resources without a namespace are in
-n's namespace, also with -A (istioctl leaves them without one then). The annotation
galley.istio.io/analyze-suppress: \"CODE,CODE\" (or \"*\") on a resource silences those codes on it.

Every resource read is analyzed, also one that fails validation (reported as IST0106), as
Istio does. A field of the wrong type leaves its document out (Istio cannot decode it); an
unknown field, which Istio's decoder ignores, is reported and the resource kept without it.

Exit status: 79 when a message at or above --failure-threshold (default Error) is reported,
whatever the output format (istioctl exits 0 with -o json/yaml, istio/istio#35054); 1 when a
path does not exist or a --suppress value is malformed; 2 for an unknown flag or value; else 0.

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
  SLU0003 [Info] KindNotEnforced: valid config of a kind sluice validates but does not enforce
          (WorkloadGroup, ProxyConfig, EnvoyFilter, WasmPlugin, TrafficExtension,
          Gateway API Gateways).
  SLU0004 [Info] FieldNotEnforced: a field Istio accepts that sluice validates but does not act
          on yet (DestinationRule zoneAwareLbSetting, warmup, …; Sidecar ingress tls; corsPolicy).
A resource defined twice gets IST0133 on the definitions not used (the first valid one is).

Use --list-analyzers for every code, and for the checks Istio makes differently or not at all.";

/// Output formats, as istioctl's `-o`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Log,
    Json,
    Yaml,
}

/// A message level given on the command line (`Info`, `Warning`, `Error`, any case).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    #[value(name = "Info")]
    Info,
    #[value(name = "Warning")]
    Warning,
    #[value(name = "Error")]
    Error,
}

impl Threshold {
    /// True when `level` is this bad or worse.
    fn admits(self, level: Level) -> bool {
        let limit = match self {
            Threshold::Info => Level::Info,
            Threshold::Warning => Level::Warning,
            Threshold::Error => Level::Error,
        };
        // `Level` sorts Error first.
        level <= limit
    }
}

/// Options of `sluice analyze` (istioctl analyze's names).
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// Files or directories (every *.yaml, *.yml, *.json below them), or `-` for standard input.
    #[arg(required_unless_present = "list_analyzers")]
    pub paths: Vec<PathBuf>,
    /// Output format: log lines (istioctl's default), json or yaml.
    #[arg(
        short = 'o',
        long,
        value_enum,
        ignore_case = true,
        default_value = "log"
    )]
    pub output: OutputFormat,
    /// List every message code with its level and meaning, and the checks that are skipped.
    #[arg(short = 'L', long)]
    pub list_analyzers: bool,
    /// The namespace of resources that name none, and the only namespace whose resources'
    /// messages are printed (unless --all-namespaces).
    #[arg(short = 'n', long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    /// Print messages about resources in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Accepted for istioctl compatibility: sluice never reads a cluster, so true (istioctl's
    /// default) and false both analyze the files alone.
    #[arg(
        short = 'k',
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub use_kube: bool,
    /// A mesh config file (the `mesh` key of the `istio` ConfigMap, as YAML), as istioctl's flag;
    /// without it, an `istio-system/istio` ConfigMap among the files is the mesh config.
    #[arg(long = "meshConfigFile", value_name = "FILE")]
    pub mesh_config_file: Option<PathBuf>,
    /// Print only messages at least this bad.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        default_value = "Info",
        value_name = "LEVEL"
    )]
    pub output_threshold: Threshold,
    /// Exit 79 when a message at least this bad is found (whatever --output-threshold hides).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        default_value = "Error",
        value_name = "LEVEL"
    )]
    pub failure_threshold: Threshold,
    /// Do not report CODE on the resources matching `Kind ns/name`, where `*` matches any
    /// characters (e.g. "IST0101=VirtualService default/*"). Repeatable.
    #[arg(short = 'S', long, value_name = "CODE=RESOURCE")]
    pub suppress: Vec<String>,
    /// Accepted for istioctl compatibility: directories are always searched recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Accepted for istioctl compatibility (a Go duration such as 30s or 1m30s); analysis of
    /// files does not wait on anything.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_go_duration)]
    pub timeout: Duration,
    /// Color the level of log lines [default: true when stdout is a terminal, TERM is not dumb
    /// and NO_COLOR is not set].
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub color: Option<bool>,
}

/// A Go `time.ParseDuration` string: `30s`, `1m30s`, `1.5h`, `300ms`, `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?} (use a Go duration such as 30s or 1m30s)");
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// One `--suppress CODE=RESOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub code: String,
    /// A `Kind ns/name` pattern where `*` matches any characters.
    pub resource: String,
}

impl Suppression {
    /// Parses `CODE=RESOURCE` as istioctl does (exactly one `=`).
    pub fn parse(text: &str) -> Result<Suppression, String> {
        let parts: Vec<&str> = text.split('=').collect();
        match parts.as_slice() {
            [code, resource] => Ok(Suppression {
                code: (*code).to_string(),
                resource: (*resource).to_string(),
            }),
            _ => Err(format!(
                "{text} is not a valid suppression value. See sluice analyze --help"
            )),
        }
    }

    /// True when `code` is one istioctl or sluice can report.
    pub fn code_is_known(&self) -> bool {
        ISTIO_CODES.contains(&self.code.as_str()) || CODES.iter().any(|c| c.code == self.code)
    }

    fn matches(&self, m: &Message) -> bool {
        m.code == self.code
            && m.origin
                .as_deref()
                .is_some_and(|origin| glob(&self.resource, origin))
    }
}

/// `*` matches any run of characters (github.com/ryanuber/go-glob, which istioctl uses).
fn glob(pattern: &str, subject: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == subject;
    }
    let last = parts.len() - 1;
    let mut rest = subject;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == last {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// What to analyze and which messages to keep.
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespace of resources that name none, and the one messages are kept for.
    pub namespace: String,
    /// Keep messages about every namespace.
    pub all_namespaces: bool,
    pub suppressions: Vec<Suppression>,
    /// The mesh config from `--meshConfigFile`.
    pub mesh: Option<sluice_api::mesh::MeshConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "default".into(),
            all_namespaces: true,
            suppressions: Vec::new(),
            mesh: None,
        }
    }
}

/// The result of one analysis.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Every message kept (namespace and suppressions applied), in istioctl's order.
    pub messages: Vec<Message>,
    /// The files read, in order (`-` for standard input), as istioctl names them.
    pub files: Vec<String>,
    /// Notes for stderr (files skipped for their extension).
    pub notes: Vec<String>,
}

/// Every message for `paths`, analyzing all namespaces.
pub fn check(paths: &[PathBuf]) -> Vec<Message> {
    analyze_paths(paths, &Options::default())
        .map(|a| a.messages)
        .unwrap_or_default()
}

/// Reads `paths` (`-` is standard input) and analyzes them. Fails, as istioctl does, when a path
/// does not exist or cannot be looked at.
pub fn analyze_paths(paths: &[PathBuf], opts: &Options) -> Result<Analysis, String> {
    let mut analysis = Analysis::default();
    let loaded = load(paths, &mut analysis)?;
    let mut messages = messages_for(loaded, opts);
    messages.retain(|m| opts.all_namespaces || in_namespace(m, &opts.namespace));
    messages.retain(|m| !opts.suppressions.iter().any(|s| s.matches(m)));
    sort_as_istioctl(&mut messages);
    analysis.messages = messages;
    Ok(analysis)
}

/// `--meshConfigFile`: read (never blocking on a FIFO, bounded in size) and decoded; what is
/// wrong is said with the file and line.
fn read_mesh_config_file(file: &Path) -> Result<sluice_api::mesh::MeshConfig, String> {
    let bytes = read_config_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: file is not valid UTF-8 text", file.display()))?;
    sluice_api::decode::decode_mesh_file(file, &text).map_err(|diags| {
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The files under `paths`, in argument order, decoded.
fn load(paths: &[PathBuf], analysis: &mut Analysis) -> Result<LoadResult, String> {
    let mut out = LoadResult::default();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("read standard input: {}", go_reason(&e)))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            extend(&mut out, decode_keeping_unknown_fields(path, text));
            analysis.files.push("-".into());
            continue;
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("stat {}: {}", path.display(), go_reason(&e)))?;
        if !meta.is_dir() && !has_config_extension(path) {
            analysis.notes.push(format!(
                "Skipping file {}, recognized file extensions are: [.json .yaml .yml]",
                path.display()
            ));
            continue;
        }
        let listing = list_config_files(std::slice::from_ref(path));
        out.diagnostics.extend(listing.diagnostics());
        for file in listing.files {
            if !seen.insert(file.clone()) {
                continue;
            }
            analysis.files.push(file.display().to_string());
            match read_config_file(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => extend(&mut out, decode_keeping_unknown_fields(&file, text)),
                    Err(_) => {
                        out.diagnostics
                            .push(file_error(&file, 1, "file is not valid UTF-8 text"))
                    }
                },
                Err(message) => out.diagnostics.push(file_error(&file, 0, &message)),
            }
        }
    }
    Ok(out)
}

fn extend(out: &mut LoadResult, more: LoadResult) {
    out.resources.extend(more.resources);
    out.diagnostics.extend(more.diagnostics);
}

fn file_error(file: &Path, line: u32, message: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.display().to_string(),
        line,
        resource: None,
        field: String::new(),
        message: message.to_string(),
    }
}

fn has_config_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    )
}

/// An I/O error in Go's words (`no such file or directory`).
fn go_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Bounds the decode passes of one file: each pass removes the unknown fields the previous one
/// found (one per document, as decoding stops at a document's first error).
const MAX_UNKNOWN_FIELD_PASSES: usize = 16;

/// True for "unknown field" errors, which Istio's decoder ignores (`AllowUnknownFields`).
fn is_unknown_field(d: &Diagnostic) -> bool {
    d.is_error()
        && !d.field.is_empty()
        && (d.message.starts_with("unknown field `")
            || (d.message.starts_with("field `") && d.message.contains("was removed from Istio")))
}

/// Decodes a file as Istio's analyzer reads it: a document with a field of the wrong type is
/// left out (reported), while a document with an unknown field is kept without that field (and
/// the field still reported as IST0106). The unknown fields are blanked out of the text, keeping
/// every line where it was, and the file decoded again; a field that cannot be cut out that way
/// (written inside `{…}` or in JSON) leaves its document out, as before.
fn decode_keeping_unknown_fields(file: &Path, text: String) -> LoadResult {
    let mut best = decode_str(file, &text);
    let mut unknown: Vec<Diagnostic> = best
        .diagnostics
        .iter()
        .filter(|d| is_unknown_field(d))
        .cloned()
        .collect();
    if unknown.is_empty() || has_extension(file, "json") {
        return best;
    }
    let mut reported = unknown.clone();
    let mut text = text;
    for _ in 0..MAX_UNKNOWN_FIELD_PASSES {
        let Some((stripped, blanked)) = blank_fields(&text, &unknown) else {
            break;
        };
        let next = decode_str(file, &stripped);
        // A new error on a line just blanked, or about the file, is one the cut made.
        let broken = next.diagnostics.iter().any(|d| {
            d.is_error()
                && !is_unknown_field(d)
                && !best.diagnostics.contains(d)
                && (d.resource.is_none() || blanked.contains(&d.line))
        });
        if broken {
            break;
        }
        unknown = next
            .diagnostics
            .iter()
            .filter(|d| is_unknown_field(d))
            .cloned()
            .collect();
        reported.extend(unknown.iter().cloned());
        best = next;
        text = stripped;
        if unknown.is_empty() {
            break;
        }
    }
    best.diagnostics.retain(|d| !is_unknown_field(d));
    best.diagnostics.extend(reported);
    best.diagnostics.dedup();
    best
}

fn has_extension(file: &Path, ext: &str) -> bool {
    file.extension().and_then(|e| e.to_str()) == Some(ext)
}

/// `text` with the key of each diagnostic's field (on the diagnostic's line) and the block
/// under it replaced by empty lines; the lines blanked. `None` when no field could be cut.
fn blank_fields(text: &str, diags: &[Diagnostic]) -> Option<(String, Vec<u32>)> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mut blanked = Vec::new();
    for d in diags {
        let key = d.field.rsplit('.').next().unwrap_or("");
        if key.is_empty() || key.ends_with(']') || d.line == 0 {
            continue;
        }
        let index = d.line as usize - 1;
        let Some(line) = lines.get(index) else {
            continue;
        };
        let (content, ending) = split_ending(line);
        let indent = content.len() - content.trim_start_matches(' ').len();
        // Sequence dashes before the key: `  - - key: v`.
        let mut col = indent;
        while content[col..].starts_with("- ") {
            col += 2;
            col += content[col..].len() - content[col..].trim_start_matches(' ').len();
        }
        let after = &content[col..];
        let starts_with_key = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .any(|k| {
            after.starts_with(k.as_str())
                && after[k.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == '\t' || c == '\r')
        });
        if !starts_with_key {
            continue;
        }
        let kept = content[..col].trim_end().to_string();
        lines[index] = format!("{kept}{ending}");
        blanked.push(d.line);
        // The block under the key: following lines indented deeper than it, and blank lines.
        for (i, next) in lines.iter_mut().enumerate().skip(index + 1) {
            let (c, e) = split_ending(next);
            let trimmed = c.trim_start_matches(' ');
            let deeper = c.len() - trimmed.len() > col;
            if !(trimmed.trim().is_empty() || deeper) {
                break;
            }
            *next = e.to_string();
            blanked.push(i as u32 + 1);
        }
    }
    (!blanked.is_empty()).then(|| (lines.concat(), blanked))
}

fn split_ending(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

/// Validates every resource, picks one definition of each, and runs the analyzers over them:
/// all messages, before namespace and suppression filters.
fn messages_for(loaded: LoadResult, opts: &Options) -> Vec<Message> {
    let mut diags: Vec<Diagnostic> = loaded.diagnostics;
    let mut resources = loaded.resources;
    for res in &mut resources {
        // Only namespaced kinds, and only where the YAML gives no namespace.
        if res.kind != Kind::IngressClass
            && res.origin.positions.get("metadata.namespace").is_none()
            && res.meta.namespace != opts.namespace
        {
            res.make_mut().meta.namespace = opts.namespace.clone();
        }
    }
    // Each resource with whether it passes validation; invalid ones are analyzed too.
    let mut checked: Vec<(Resource, bool)> = Vec::with_capacity(resources.len());
    for res in resources {
        let problems = validate(&res);
        let valid = !problems.iter().any(Diagnostic::is_error);
        diags.extend(problems);
        checked.push((res, valid));
    }
    let chosen = choose_definitions(&checked, &mut diags);
    let mut used: Vec<Resource> = chosen.iter().map(|&i| checked[i].0.clone()).collect();
    used.sort_by(sluice_model::snapshot::creation_order);

    diags.extend(sluice_model::references::fields_not_acted_on(&used));
    let mut out: Vec<Message> = diags.iter().map(analyze::from_diagnostic).collect();
    out.extend(analyze::analyze_with_mesh(&used, opts.mesh.as_ref()));
    out.extend(analyze::certificate_file_messages(
        &used,
        crate::validate_cmd::check_file,
    ));
    analyze::sort(&mut out);
    let mut out = analyze::summarize(out, sluice_api::diagnostics::MAX_ALIKE);

    // Messages on a resource that suppresses their code by annotation.
    let suppressed: HashMap<String, &str> = used
        .iter()
        .filter_map(|r| {
            let codes = r.meta.annotations.get(SUPPRESS_ANNOTATION)?;
            Some((format!("{} {}", r.kind, r.key()), codes.as_str()))
        })
        .collect();
    out.retain(|m| {
        let Some(codes) = m.origin.as_ref().and_then(|o| suppressed.get(o)) else {
            return true;
        };
        !codes.split(',').any(|c| c == "*" || c == m.code)
    });
    out
}

/// Indexes into `checked` of the definition used for each (kind, namespace, name): the first
/// valid one, else the first. Every other definition gets a warning naming the one used.
fn choose_definitions(checked: &[(Resource, bool)], diags: &mut Vec<Diagnostic>) -> Vec<usize> {
    let mut by_key: HashMap<(Kind, &str, &str), usize> = HashMap::new();
    let mut order = Vec::new();
    for (i, (res, valid)) in checked.iter().enumerate() {
        let key = (
            res.kind,
            res.meta.namespace.as_str(),
            res.meta.name.as_str(),
        );
        match by_key.get(&key) {
            None => {
                by_key.insert(key, i);
                order.push(key);
            }
            Some(&first) if *valid && !checked[first].1 => {
                by_key.insert(key, i);
            }
            Some(_) => {}
        }
    }
    for (i, (res, _)) in checked.iter().enumerate() {
        let key = (
            res.kind,
            res.meta.namespace.as_str(),
            res.meta.name.as_str(),
        );
        let used = by_key[&key];
        if used != i {
            let (first, _) = &checked[used];
            diags.push(Diagnostic::at(
                res,
                Severity::Warning,
                "metadata.name",
                format!(
                    "{} {} is also defined in {}; that definition is used",
                    res.kind,
                    res.key(),
                    first.origin.file.display()
                ),
            ));
        }
    }
    order.iter().map(|k| by_key[k]).collect()
}

/// True when the message is about no resource, a cluster-wide one, or one in `namespace`.
fn in_namespace(m: &Message, namespace: &str) -> bool {
    let Some(origin) = &m.origin else {
        return true;
    };
    let (kind, name) = origin.split_once(' ').unwrap_or((origin, ""));
    if kind == Kind::IngressClass.as_str() {
        return true;
    }
    match name.split_once('/') {
        Some((ns, _)) => ns == namespace || ns.is_empty(),
        None => true,
    }
}

/// istioctl's order (`diag.Messages.Sort`): level, code, messages about no resource first, then
/// by kind, name and namespace; messages of one resource keep their order (file, line).
fn sort_as_istioctl(messages: &mut [Message]) {
    fn comparator(m: &Message) -> Option<(String, String, String)> {
        let origin = m.origin.as_ref()?;
        let (kind, rest) = origin.split_once(' ').unwrap_or((origin, ""));
        let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
        Some((kind.to_string(), name.to_string(), ns.to_string()))
    }
    messages.sort_by_cached_key(|m| (m.level, m.code, comparator(m)));
}

/// The documentation page of a code, as istioctl links it (none for sluice's own codes).
fn documentation_url(m: &Message) -> Option<String> {
    m.code.starts_with("IST").then(|| {
        format!(
            "{CONFIG_ANALYSIS_URL}/{}/?ref=istioctl-analyze",
            m.code.to_ascii_lowercase()
        )
    })
}

/// The JSON form of one message, with istioctl's fields in its (alphabetical) order; `origin`
/// only for a message about a resource.
fn message_json(m: &Message) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("code".into(), json!(m.code));
    object.insert(
        "documentationUrl".into(),
        json!(documentation_url(m).unwrap_or_default()),
    );
    object.insert("level".into(), json!(m.level.as_str()));
    object.insert("message".into(), json!(m.text));
    if let Some(origin) = &m.origin {
        object.insert("origin".into(), json!(origin));
    }
    if !m.file.is_empty() {
        object.insert("reference".into(), json!(m.reference()));
    }
    Value::Object(object)
}

/// The JSON form of the messages, with istioctl's field names.
pub fn to_json(messages: &[Message]) -> Value {
    Value::Array(messages.iter().map(message_json).collect())
}

/// `-o json` output: Go's `json.MarshalIndent(messages, "", "\t")`, which escapes `<`, `>`
/// and `&` (no newline at the end).
pub fn json_text(messages: &[Message]) -> String {
    if messages.is_empty() {
        return "[]".into();
    }
    let mut text = String::from("[\n");
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(map) = message_json(m) else {
            continue;
        };
        text.push_str("\t{\n");
        let fields: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("\t\t{}: {v}", Value::String(k.clone())))
            .collect();
        text.push_str(&fields.join(",\n"));
        text.push_str(if i + 1 < messages.len() {
            "\n\t},\n"
        } else {
            "\n\t}\n"
        });
    }
    text.push(']');
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `-o yaml` output: what Go's `sigs.k8s.io/yaml` makes of the JSON form (keys sorted, strings
/// plain, single-quoted or double-quoted as its emitter chooses, long lines folded at 80
/// columns). Ends with a newline; `[]` when there is no message.
pub fn to_yaml(messages: &[Message]) -> String {
    if messages.is_empty() {
        return "[]\n".into();
    }
    let mut out = String::new();
    for m in messages {
        let Value::Object(map) = message_json(m) else {
            continue;
        };
        let mut first = true;
        for (k, v) in map {
            let prefix = if first { "- " } else { "  " };
            first = false;
            let value = v.as_str().unwrap_or_default();
            out.push_str(prefix);
            out.push_str(&k);
            out.push(':');
            yaml_scalar(&mut out, value, prefix.len() + k.len() + 1);
            out.push('\n');
        }
    }
    out
}

/// Whether Go's YAML would read `s`, written plain, as something other than a string.
fn yaml_resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let plain = s.replace('_', "");
    let digits = plain.trim_start_matches(['+', '-']);
    let int_like = !digits.is_empty()
        && (digits.bytes().all(|b| b.is_ascii_digit())
            || digits
                .strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
            || digits
                .strip_prefix("0b")
                .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c == b'0' || c == b'1')));
    let float_like = s.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c))
        && plain.parse::<f64>().is_ok()
        && !plain.to_ascii_lowercase().contains("inf")
        && !plain.to_ascii_lowercase().contains("nan");
    // Base-60 numbers (`1:20`) are floats to YAML 1.1.
    let base60 = s.contains(':')
        && s.split(':').enumerate().all(|(i, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (i == 0 || p.len() <= 2)
        });
    int_like || float_like || base60
}

/// Writes ` value` after `key:` at `column`, as libyaml's emitter would in a block mapping.
fn yaml_scalar(out: &mut String, value: &str, column: usize) {
    const BEST_WIDTH: usize = 80;
    const INDENT: usize = 4;
    let special = value
        .chars()
        .any(|c| c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}');
    if special || yaml_resolves_to_non_string(value) {
        out.push(' ');
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
        return;
    }
    let plain = plain_allowed(value);
    out.push(' ');
    let mut column = column + 1;
    if !plain {
        out.push('\'');
        column += 1;
    }
    let chars: Vec<char> = value.chars().collect();
    let mut spaces = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let next_is_space = chars.get(i + 1) == Some(&' ');
            let inner = plain || (i > 0 && i + 1 < chars.len());
            if !spaces && column > BEST_WIDTH && inner && !next_is_space {
                out.push('\n');
                out.push_str(&" ".repeat(INDENT));
                column = INDENT;
            } else {
                out.push(' ');
                column += 1;
            }
            spaces = true;
        } else {
            if c == '\'' && !plain {
                out.push('\'');
                column += 1;
            }
            out.push(c);
            column += 1;
            spaces = false;
        }
    }
    if !plain {
        out.push('\'');
    }
}

/// libyaml's test for a plain scalar in block context (`yaml_emitter_analyze_scalar`).
fn plain_allowed(value: &str) -> bool {
    if value.starts_with("---") || value.starts_with("...") {
        return false;
    }
    let chars: Vec<char> = value.chars().collect();
    if chars.first() == Some(&' ') || chars.last() == Some(&' ') {
        return false;
    }
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let followed_by_blank = next.is_none_or(|n| n == ' ');
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(c) {
                return false;
            }
            if (c == '?' || c == ':' || c == '-') && followed_by_blank {
                return false;
            }
        } else {
            if c == ':' && followed_by_blank {
                return false;
            }
            if c == '#' && chars[i - 1] == ' ' {
                return false;
            }
        }
    }
    true
}

/// A log line as istioctl prints it: `Error [IST0101] (VirtualService default/foo f.yaml:12) …`.
/// A message about a file rather than a resource (sluice's decode errors) names the file alone.
fn log_line(m: &Message, color: bool) -> String {
    let level = if color {
        let prefix = match m.level {
            Level::Error => "\x1b[1;31m",
            Level::Warning => "\x1b[33m",
            Level::Info => "",
        };
        format!("{prefix}{}\x1b[0m", m.level)
    } else {
        m.level.to_string()
    };
    let mut place = String::new();
    if let Some(origin) = &m.origin {
        place.push_str(origin);
    }
    if !m.file.is_empty() {
        if !place.is_empty() {
            place.push(' ');
        }
        place.push_str(&m.reference());
    }
    if place.is_empty() {
        format!("{level} [{}] {}", m.code, m.text)
    } else {
        format!("{level} [{}] ({place}) {}", m.code, m.text)
    }
}

fn list_analyzers() {
    let mut text = String::from("Codes reported by sluice analyze:\n");
    for c in CODES {
        text.push_str(&format!(
            "  {} [{}] {}: {}\n",
            c.code, c.level, c.name, c.description
        ));
    }
    text.push_str("\nIstio checks not made:\n");
    for (what, why) in SKIPPED {
        text.push_str(&format!("  {what}: {why}\n"));
    }
    print_out(&text);
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Whether log lines are colored: `--color`, else when stdout is a terminal, TERM is not `dumb`
/// (istioctl's default) and NO_COLOR is not set.
fn use_color(args: &AnalyzeArgs) -> bool {
    args.color
        .unwrap_or_else(|| crate::color::enabled(crate::color::Stream::Stdout))
}

/// Runs `sluice analyze`; returns the exit status (79 when issues reach --failure-threshold).
pub fn run(args: &AnalyzeArgs) -> i32 {
    if args.list_analyzers {
        list_analyzers();
        return 0;
    }
    if args.recursive {
        eprintln!(
            "The recursive flag has been removed and is hardcoded to true without explicitly specifying it."
        );
    }
    let mut suppressions = Vec::new();
    for s in &args.suppress {
        match Suppression::parse(s) {
            Ok(s) => {
                if !s.code_is_known() {
                    eprintln!(
                        "Warning: Supplied message code '{}' is an unknown message code and will not have any effect.",
                        s.code
                    );
                }
                suppressions.push(s);
            }
            Err(e) => {
                eprintln!("Error: {e}");
                return 1;
            }
        }
    }
    let mesh = match &args.mesh_config_file {
        None => None,
        Some(file) => match read_mesh_config_file(file) {
            Ok(mesh) => Some(mesh),
            Err(e) => {
                eprintln!("Error: {e}");
                return 1;
            }
        },
    };
    let opts = Options {
        namespace: args.namespace.clone(),
        all_namespaces: args.all_namespaces,
        suppressions,
        mesh,
    };
    let analysis = match analyze_paths(&args.paths, &opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    for note in &analysis.notes {
        eprintln!("{note}");
    }
    let shown: Vec<Message> = analysis
        .messages
        .iter()
        .filter(|m| args.output_threshold.admits(m.level))
        .cloned()
        .collect();
    match args.output {
        OutputFormat::Log => {
            let color = use_color(args);
            let lines: Vec<String> = shown.iter().map(|m| log_line(m, color)).collect();
            print_out(&format!("{}\n", lines.join("\n")));
        }
        OutputFormat::Json => print_out(&format!("{}\n", json_text(&shown))),
        OutputFormat::Yaml => print_out(&format!("{}\n", to_yaml(&shown))),
    }
    let target = if args.all_namespaces {
        "all namespaces".to_string()
    } else {
        format!("namespace: {}", args.namespace)
    };
    if shown.is_empty() {
        match analysis.files.as_slice() {
            [] => eprintln!("\u{2714} No validation issues found when analyzing {target}."),
            [one] => eprintln!("\u{2714} No validation issues found when analyzing {one}."),
            many => eprintln!(
                "\u{2714} No validation issues found when analyzing:\n  - {}",
                many.join("\n  - ")
            ),
        }
    }
    let failed = analysis
        .messages
        .iter()
        .any(|m| args.failure_threshold.admits(m.level));
    if failed {
        eprintln!("Error: Analyzers found issues when analyzing {target}.");
        eprintln!("See {CONFIG_ANALYSIS_URL} for more information about causes and resolutions.");
        EXIT_ISSUES
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_time_parse_duration_does() {
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "30", "5x", "-1s", "s", "1m30"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suppressions_parse_and_glob_as_istioctl() {
        let s = Suppression::parse("IST0101=VirtualService default/*").unwrap();
        assert_eq!(s.code, "IST0101");
        assert!(glob(&s.resource, "VirtualService default/reviews"));
        assert!(!glob(&s.resource, "VirtualService prod/reviews"));
        assert!(glob("*", "anything"));
        assert!(glob("Gateway *", "Gateway istio-system/gw"));
        assert!(glob("*/gw", "Gateway istio-system/gw"));
        assert!(glob("Gateway *-system/*", "Gateway istio-system/gw"));
        assert!(!glob("Gateway *-system/x*", "Gateway istio-system/gw"));
        assert!(!glob("Gateway istio-system/gw", "Gateway istio-system/gw2"));
        assert!(Suppression::parse("IST0101").is_err());
        assert!(Suppression::parse("IST0101=a=b").is_err());
        assert!(Suppression::parse("IST0103=Pod x").unwrap().code_is_known());
        assert!(Suppression::parse("SLU0001=x").unwrap().code_is_known());
        assert!(!Suppression::parse("IST9999=x").unwrap().code_is_known());
    }

    #[test]
    fn yaml_scalars_are_quoted_and_folded_as_go_yaml_does() {
        let mut out = String::new();
        yaml_scalar(&mut out, "Referenced host not found: \"x\"", 10);
        assert_eq!(out, " 'Referenced host not found: \"x\"'");
        let mut out = String::new();
        yaml_scalar(&mut out, "VirtualService default/foo", 9);
        assert_eq!(out, " VirtualService default/foo");
        let mut out = String::new();
        yaml_scalar(&mut out, "true", 9);
        assert_eq!(out, " \"true\"");
        let mut out = String::new();
        yaml_scalar(&mut out, "it's: 1", 9);
        assert_eq!(out, " 'it''s: 1'");
        let mut out = String::new();
        let long = "word ".repeat(20) + "end";
        yaml_scalar(&mut out, &long, 10);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[1].starts_with("    word"), "{out}");
        // Broken at the first space past column 80 (the key took 10 columns).
        assert!(
            lines[0].len() + 10 > 80 && lines[0].len() + 10 <= 86,
            "{out}"
        );
    }

    #[test]
    fn unknown_fields_are_blanked_with_their_block() {
        let text = "spec:\n  hosts: [a]\n  bogus:\n    deep: 1\n\n  http:\n  - timout: 1s\n    route: []\n";
        let d = |line, field: &str| Diagnostic {
            severity: Severity::Error,
            file: "f".into(),
            line,
            resource: None,
            field: field.into(),
            message: "unknown field `x`".into(),
        };
        let (out, blanked) =
            blank_fields(text, &[d(3, "spec.bogus"), d(7, "spec.http[0].timout")]).unwrap();
        assert_eq!(
            out,
            "spec:\n  hosts: [a]\n\n\n\n  http:\n  -\n    route: []\n"
        );
        assert_eq!(blanked, [3, 4, 5, 7]);
        // Inside a flow mapping the key cannot be cut by lines.
        assert!(blank_fields("spec: {hosts: [a], bogus: 1}\n", &[d(1, "spec.bogus")]).is_none());
    }
}
