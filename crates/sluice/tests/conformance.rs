//! The conformance suite: every case under `tests/conformance/cases/GROUP/CASE/` is run through
//! the real `sluice` binary and compared with what the case expects.
//!
//! A case directory holds:
//! - `input.yaml`: the configuration (the command runs in the case directory on `input.yaml`,
//!   so other files there can be named by relative paths);
//! - `expected.txt`: one expected message per line, `CODE Kind ns/name`
//!   (`IST0101 VirtualService default/foo`; `CODE` alone for a message about no resource), or
//!   the single word `none`. Blank lines and lines starting with `#` are ignored.
//!   Instead, a case may expect `valid`, or one or more `invalid FIELD.PATH` lines: then
//!   `sluice validate input.yaml` is run, and must exit 0 with no error (`valid`) or exit 1
//!   with errors on exactly those fields (warnings are not compared; `invalid -` stands for an
//!   error about the document rather than a field);
//! - `args.txt` (optional): the arguments given to `sluice analyze` before `input.yaml`, split
//!   as a shell would (quotes group words). Without it the case runs with `--all-namespaces`,
//!   as Istio's own analyzer tests do; with it, exactly with its arguments;
//! - `exit.txt` (optional): the exit status expected (`79`, `0`).
//!
//! Analyze cases run `sluice analyze -o json ARGS input.yaml` and compare the set of
//! (code, resource) pairs. Per-code recall and precision over all cases are printed on stderr
//! (`cargo nextest run -p sluice --test conformance --no-capture`); the test fails listing every
//! case that does not match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cases")
}

/// What a case expects.
#[derive(Debug)]
enum Expected {
    /// `sluice analyze` reports exactly these `CODE Kind ns/name` lines.
    Messages(BTreeSet<String>),
    /// `sluice validate` accepts the input.
    Valid,
    /// `sluice validate` refuses the input with errors on exactly these fields.
    Invalid(BTreeSet<String>),
}

struct Case {
    /// `GROUP/CASE`.
    name: String,
    dir: PathBuf,
    expected: Expected,
    args: Vec<String>,
    exit: Option<i32>,
}

/// The outcome of one case.
struct Outcome {
    name: String,
    /// Empty when the case matches.
    problems: Vec<String>,
    /// For analyze cases: the expected and reported pairs, for the per-code numbers.
    pairs: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

/// Splits `text` into words as a shell would for plain words and '…' or "…" quoting.
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                        None => return Err(format!("unclosed {c} quote")),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `CODE Kind ns/name` with single spaces, so spacing in expected.txt does not matter.
fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_case(group: &str, dir: &Path) -> Result<Case, String> {
    let name = format!(
        "{group}/{}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    if !dir.join("input.yaml").is_file() {
        return Err(format!("{name}: no input.yaml"));
    }
    let text = std::fs::read_to_string(dir.join("expected.txt"))
        .map_err(|e| format!("{name}: expected.txt: {e}"))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(normalize)
        .collect();
    let expected = if lines == ["valid"] {
        Expected::Valid
    } else if !lines.is_empty() && lines.iter().all(|l| l.starts_with("invalid ")) {
        Expected::Invalid(
            lines
                .iter()
                .map(|l| l["invalid ".len()..].to_string())
                .collect(),
        )
    } else if lines == ["none"] {
        Expected::Messages(BTreeSet::new())
    } else if lines.is_empty() {
        return Err(format!(
            "{name}: expected.txt is empty (write `none` for no messages)"
        ));
    } else {
        for l in &lines {
            let code = l.split(' ').next().unwrap_or("");
            let well_formed = code.len() == 7
                && (code.starts_with("IST") || code.starts_with("SLU"))
                && code[3..].bytes().all(|b| b.is_ascii_digit());
            if !well_formed || l == "valid" || l == "none" || l.starts_with("invalid ") {
                return Err(format!(
                    "{name}: expected.txt line {l:?} is not `CODE Kind ns/name`, `none`, `valid` or `invalid FIELD`"
                ));
            }
        }
        Expected::Messages(lines.into_iter().collect())
    };
    let args = match std::fs::read_to_string(dir.join("args.txt")) {
        Ok(text) => shell_words(&text).map_err(|e| format!("{name}: args.txt: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec!["--all-namespaces".into()],
        Err(e) => return Err(format!("{name}: args.txt: {e}")),
    };
    let exit = match std::fs::read_to_string(dir.join("exit.txt")) {
        Ok(text) => Some(
            text.trim()
                .parse()
                .map_err(|_| format!("{name}: exit.txt {:?} is not a number", text.trim()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{name}: exit.txt: {e}")),
    };
    Ok(Case {
        name,
        dir: dir.to_path_buf(),
        expected,
        args,
        exit,
    })
}

/// Every case, sorted by name; a case directory that cannot be read is an error.
fn all_cases() -> (Vec<Case>, Vec<String>) {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    let mut dirs = Vec::new();
    let root = cases_root();
    let groups = match std::fs::read_dir(&root) {
        Ok(g) => g,
        Err(e) => return (cases, vec![format!("{}: {e}", root.display())]),
    };
    for group in groups.flatten() {
        if !group.path().is_dir() {
            continue;
        }
        let group_name = group.file_name().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(group.path()) else {
            errors.push(format!("{}: cannot be listed", group.path().display()));
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                dirs.push((group_name.clone(), entry.path()));
            }
        }
    }
    dirs.sort();
    for (group, dir) in dirs {
        match read_case(&group, &dir) {
            Ok(c) => cases.push(c),
            Err(e) => errors.push(e),
        }
    }
    (cases, errors)
}

/// The `CODE Kind ns/name` pairs of `sluice analyze -o json` output.
fn reported_pairs(stdout: &[u8]) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("output is not JSON: {e}"))?;
    let items = v.as_array().ok_or("output is not a JSON array")?;
    Ok(items
        .iter()
        .map(|m| {
            let code = m["code"].as_str().unwrap_or("?");
            match m["origin"].as_str() {
                Some(origin) if !origin.is_empty() => format!("{code} {origin}"),
                _ => code.to_string(),
            }
        })
        .collect())
}

/// The fields of the error lines of `sluice validate` (`file:line: [Kind ns/name: ][field: ]message`;
/// warnings say `warning: ` before the message). An error about no field counts as field `-`.
fn error_fields(stdout: &str) -> BTreeSet<String> {
    let is_resource = |s: &str| {
        let mut words = s.split(' ');
        let kind = words.next().unwrap_or("");
        kind.starts_with(|c: char| c.is_ascii_uppercase())
            && kind.chars().all(|c| c.is_ascii_alphanumeric())
            && words.next().is_some()
            && words.next().is_none()
    };
    let mut fields = BTreeSet::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("input.yaml:") else {
            continue;
        };
        let Some((_line, rest)) = rest.split_once(": ") else {
            continue;
        };
        let mut rest = rest;
        if let Some((first, after)) = rest.split_once(": ") {
            if is_resource(first) {
                rest = after;
            }
        }
        let (field, message) = match rest.split_once(": ") {
            Some((f, m)) if !f.contains(' ') && f != "warning" => (f, m),
            _ => ("-", rest),
        };
        if !message.starts_with("warning: ") && !rest.starts_with("warning: ") {
            fields.insert(field.to_string());
        }
    }
    fields
}

fn run_case(case: &Case) -> Outcome {
    let mut problems = Vec::new();
    let mut pairs = None;
    let validate = !matches!(case.expected, Expected::Messages(_));
    let mut cmd = Command::new(SLUICE);
    cmd.current_dir(&case.dir);
    if validate {
        cmd.arg("validate");
    } else {
        cmd.args(["analyze", "-o", "json"]).args(&case.args);
    }
    cmd.arg("input.yaml");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            return Outcome {
                name: case.name.clone(),
                problems: vec![format!("cannot run {SLUICE}: {e}")],
                pairs,
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    match &case.expected {
        Expected::Messages(expected) => match reported_pairs(&out.stdout) {
            Ok(got) => {
                for missing in expected.difference(&got) {
                    problems.push(format!("missing:    {missing}"));
                }
                for extra in got.difference(expected) {
                    problems.push(format!("unexpected: {extra}"));
                }
                pairs = Some((expected.clone(), got));
            }
            Err(e) => problems.push(format!("{e}\nstdout: {stdout}\nstderr: {stderr}")),
        },
        Expected::Valid => {
            let fields = error_fields(&stdout);
            if code != Some(0) || !fields.is_empty() {
                problems.push(format!(
                    "expected valid, got exit {code:?} with errors on {fields:?}:\n{stdout}"
                ));
            }
        }
        Expected::Invalid(expected) => {
            let fields = error_fields(&stdout);
            if code != Some(1) {
                problems.push(format!("expected exit 1, got {code:?}"));
            }
            for missing in expected.difference(&fields) {
                problems.push(format!("no error on {missing}"));
            }
            for extra in fields.difference(expected) {
                problems.push(format!("unexpected error on {extra}"));
            }
            if !problems.is_empty() {
                problems.push(format!("output:\n{stdout}"));
            }
        }
    }
    if let Some(want) = case.exit {
        if code != Some(want) {
            problems.push(format!(
                "expected exit {want}, got {code:?}; stderr: {stderr}"
            ));
        }
    }
    Outcome {
        name: case.name.clone(),
        problems,
        pairs,
    }
}

/// Runs the cases on a few threads, in case order.
fn run_all(cases: &[Case]) -> Vec<Outcome> {
    let workers = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let outcome = run_case(case);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// Per code: (expected and reported, expected only, reported only).
fn per_code(outcomes: &[Outcome]) -> BTreeMap<String, (usize, usize, usize)> {
    let code_of = |pair: &String| pair.split(' ').next().unwrap_or("").to_string();
    let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (expected, got) in outcomes.iter().filter_map(|o| o.pairs.as_ref()) {
        for p in expected.intersection(got) {
            counts.entry(code_of(p)).or_default().0 += 1;
        }
        for p in expected.difference(got) {
            counts.entry(code_of(p)).or_default().1 += 1;
        }
        for p in got.difference(expected) {
            counts.entry(code_of(p)).or_default().2 += 1;
        }
    }
    counts
}

fn percent(n: usize, d: usize) -> String {
    if d == 0 {
        "   -  ".into()
    } else {
        format!("{:5.1}%", 100.0 * n as f64 / d as f64)
    }
}

#[test]
fn conformance_cases_match() {
    let (cases, mut errors) = all_cases();
    assert!(
        !cases.is_empty() || !errors.is_empty(),
        "no cases under {}",
        cases_root().display()
    );
    let outcomes = run_all(&cases);

    let counts = per_code(&outcomes);
    eprintln!("conformance: {} cases", cases.len());
    eprintln!("code     expected reported matched  recall  precision");
    for (code, (tp, fn_, fp)) in &counts {
        eprintln!(
            "{code:<8} {:>8} {:>8} {:>7}  {}  {}",
            tp + fn_,
            tp + fp,
            tp,
            percent(*tp, tp + fn_),
            percent(*tp, tp + fp)
        );
    }
    let validation: Vec<&Outcome> = outcomes.iter().filter(|o| o.pairs.is_none()).collect();
    if !validation.is_empty() {
        let ok = validation.iter().filter(|o| o.problems.is_empty()).count();
        eprintln!(
            "validate: {ok} of {} valid/invalid cases match",
            validation.len()
        );
    }
    let mut groups: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in &outcomes {
        let g = groups
            .entry(o.name.split('/').next().unwrap_or(""))
            .or_default();
        g.0 += 1;
        if o.problems.is_empty() {
            g.1 += 1;
        }
    }
    for (group, (n, ok)) in &groups {
        eprintln!("group {group}: {ok} of {n} cases match");
    }

    for o in outcomes.iter().filter(|o| !o.problems.is_empty()) {
        errors.push(format!("{}:\n  {}", o.name, o.problems.join("\n  ")));
    }
    assert!(
        errors.is_empty(),
        "{} conformance case(s) do not match:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn shell_words_groups_quoted_words() {
    assert_eq!(
        shell_words("-n  prod --suppress \"IST0101=VirtualService default/a\" -S 'x y'\n").unwrap(),
        [
            "-n",
            "prod",
            "--suppress",
            "IST0101=VirtualService default/a",
            "-S",
            "x y"
        ]
    );
    assert!(shell_words("\"open").is_err());
}

#[test]
fn validate_error_fields_are_read_from_validate_lines() {
    let out = "input.yaml:9: VirtualService default/a: spec.http[0].timeout: invalid duration\n\
               input.yaml:3: Gateway default/g: spec.servers[0].tls: warning: no credential\n\
               input.yaml:1: syntax error: mapping values are not allowed\n\
               input.yaml:4: Sidecar default/s: spec.egress: warning: ignored\n\
               input.yaml:7: WorkloadEntry default/w: metadata.name: bad name\n";
    let fields = error_fields(out);
    assert_eq!(
        fields.into_iter().collect::<Vec<_>>(),
        ["-", "metadata.name", "spec.http[0].timeout"]
    );
}
