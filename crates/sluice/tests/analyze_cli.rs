//! `sluice analyze`, `explain` and `suggest` as users run them: output lines and exit codes.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/seeds")
        .join(name)
}

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .output()
        .expect("run sluice")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn analyze_seed_004_prints_istioctl_lines_and_exits_79() {
    let files: Vec<PathBuf> = [
        "004-1-destinationrule-recommendation.yaml",
        "004-2-virtualservice-recommendation.yaml",
        "004-3-serviceentry-worldclockapi-port81.yaml",
        "004-4-virtualservice-worldclockapi-timeout.yaml",
    ]
    .iter()
    .map(|f| seed(f))
    .collect();
    let out = Command::new(SLUICE)
        .arg("analyze")
        .args(&files)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(79), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "Error [IST0101] (VirtualService default/recommendation {}:12) Referenced host not found: \"recommendation\"",
            files[1].display()
        )
    );
    assert!(lines[1].starts_with("Warning [IST0174] (DestinationRule default/recommendation "));
    assert!(lines[2].starts_with(&format!(
        "Warning [SLU0001] (VirtualService default/worldclockapi-timeout {}:13) ",
        files[3].display()
    )));
    assert!(lines[2].contains("clients calling port 80 fail"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Analyzers found issues"));

    let json = Command::new(SLUICE)
        .args(["analyze", "-o", "json"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(79));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v[0]["code"], "IST0101");
    assert_eq!(v[0]["level"], "Error");
    assert_eq!(v[0]["origin"], "VirtualService default/recommendation");
    // istioctl sets DocRef "istioctl-analyze" on every message it prints.
    assert_eq!(
        v[0]["documentationUrl"],
        "https://istio.io/latest/docs/reference/config/analysis/ist0101/?ref=istioctl-analyze"
    );
}

#[test]
fn analyze_fixed_seed_004_is_clean_and_exits_0() {
    let out = Command::new(SLUICE)
        .arg("analyze")
        .arg(seed("004-4-virtualservice-worldclockapi-timeout.yaml"))
        .arg(seed("004-5-serviceentry-worldclockapi-port80.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // istioctl prints the (empty) output, then its line on stderr naming every file.
    assert_eq!(stdout(&out), "\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "\u{2714} No validation issues found when analyzing:\n  - {}\n  - {}\n",
            seed("004-4-virtualservice-worldclockapi-timeout.yaml").display(),
            seed("004-5-serviceentry-worldclockapi-port80.yaml").display()
        )
    );
}

#[test]
fn analyze_warnings_only_exit_0_and_schema_errors_exit_79() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gw.yaml"),
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http}\n",
    )
    .unwrap();
    let out = sluice(&["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Warning [IST0133] (Gateway default/g "),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {host: a.example.com}\n      weight: -5\n",
    )
    .unwrap();
    let out = sluice(&["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(79), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Error [IST0106] (VirtualService default/bad "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn analyze_help_documents_sluice_codes() {
    let out = sluice(&["analyze", "--help"]);
    let text = stdout(&out);
    assert!(text.contains("SLU0001"), "{text}");
    assert!(text.contains("79"), "{text}");
    let list = sluice(&["analyze", "--list-analyzers"]);
    assert_eq!(list.status.code(), Some(0));
    let text = stdout(&list);
    assert!(
        text.contains("IST0173 [Error] DestinationRuleSubsetNotSelectPods"),
        "{text}"
    );
    // The checks sluice cannot make are listed after the codes.
    let (_, skipped) = text.split_once("\nIstio checks not made:\n").expect(&text);
    assert!(skipped.starts_with("  IST0"), "{text}");
}

/// Two VirtualServices routing to hosts nobody declares: `storefront` names no namespace,
/// `ledger` is in `prod`.
const TWO_NAMESPACES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: storefront
spec:
  hosts: [storefront.example.com]
  http:
  - route:
    - destination:
        host: storefront-backend
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ledger
  namespace: prod
spec:
  hosts: [ledger.example.com]
  http:
  - route:
    - destination:
        host: ledger-backend
";

/// A DestinationRule for a host nobody declares: one warning (IST0174), no error.
const WARNING_ONLY: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: nowhere
spec:
  host: nowhere.example.com
";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Writes `files` into a temporary directory and runs `sluice analyze ARGS FILES` there, so
/// references read `name.yaml:LINE`.
fn analyze_in(files: &[(&str, &str)], args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(SLUICE)
        .current_dir(dir.path())
        .arg("analyze")
        .args(args)
        .args(files.iter().map(|(name, _)| name))
        .output()
        .expect("run sluice");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const ISSUES_DEFAULT: &str = "Error: Analyzers found issues when analyzing namespace: default.
See https://istio.io/latest/docs/reference/config/analysis for more information about causes and resolutions.
";

#[test]
fn analyze_reports_only_the_default_namespace_unless_all_namespaces() {
    let r = analyze_in(&[("vs.yaml", TWO_NAMESPACES)], &[]);
    assert_eq!(r.code, Some(79), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "Error [IST0101] (VirtualService default/storefront vs.yaml:10) Referenced host not found: \"storefront-backend\"\n"
    );
    assert_eq!(r.stderr, ISSUES_DEFAULT);

    for flag in ["-A", "--all-namespaces"] {
        let r = analyze_in(&[("vs.yaml", TWO_NAMESPACES)], &[flag]);
        assert_eq!(r.code, Some(79));
        // istioctl's order: by kind, then name, then namespace.
        assert_eq!(
            r.stdout,
            "Error [IST0101] (VirtualService prod/ledger vs.yaml:22) Referenced host not found: \"ledger-backend\"\n\
             Error [IST0101] (VirtualService default/storefront vs.yaml:10) Referenced host not found: \"storefront-backend\"\n"
        );
        assert!(
            r.stderr
                .starts_with("Error: Analyzers found issues when analyzing all namespaces.\n"),
            "{}",
            r.stderr
        );
    }

    // Only namespace prod has no message: the success line names the file.
    let only_prod = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ledger, namespace: prod}\nspec:\n  hosts: [ledger.example.com]\n  http:\n  - route:\n    - destination: {host: ledger-backend}\n";
    let r = analyze_in(&[("prod.yaml", only_prod)], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_eq!(r.stdout, "\n");
    assert_eq!(
        r.stderr,
        "\u{2714} No validation issues found when analyzing prod.yaml.\n"
    );
}

#[test]
fn analyze_namespace_flag_places_resources_without_one_and_selects_messages() {
    for args in [["-n", "prod"], ["--namespace", "prod"]] {
        let r = analyze_in(&[("vs.yaml", TWO_NAMESPACES)], &args);
        assert_eq!(r.code, Some(79));
        assert_eq!(
            r.stdout,
            "Error [IST0101] (VirtualService prod/ledger vs.yaml:22) Referenced host not found: \"ledger-backend\"\n\
             Error [IST0101] (VirtualService prod/storefront vs.yaml:10) Referenced host not found: \"storefront-backend\"\n"
        );
        assert!(
            r.stderr
                .starts_with("Error: Analyzers found issues when analyzing namespace: prod.\n"),
            "{}",
            r.stderr
        );
    }
    // A short host name is resolved in the namespace the resource was put in: the route to
    // `ledger-backend` from prod finds the Service declared in prod.
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: storefront-backend}\nspec:\n  ports: [{port: 80, name: http}]\n";
    let r = analyze_in(
        &[("vs.yaml", TWO_NAMESPACES), ("svc.yaml", service)],
        &["-n", "prod"],
    );
    assert!(!r.stdout.contains("storefront"), "{}", r.stdout);
    assert!(r.stdout.contains("prod/ledger"), "{}", r.stdout);
}

#[test]
fn analyze_use_kube_and_timeout_are_accepted() {
    for args in [
        &["--use-kube=false"][..],
        &["--use-kube"],
        &["--use-kube=true"],
        &["-k"],
        &["--timeout", "1m30s"],
        &["--timeout=45s", "--use-kube=false"],
    ] {
        let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert!(
            r.stdout
                .starts_with("Warning [IST0174] (DestinationRule default/nowhere dr.yaml:6) "),
            "{args:?}: {}",
            r.stdout
        );
    }
    for args in [
        &["--use-kube=maybe"][..],
        &["--timeout", "5x"],
        &["--timeout", "30"],
    ] {
        let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], args);
        assert_eq!(r.code, Some(2), "{args:?} should be refused: {}", r.stderr);
    }
    let help = sluice(&["analyze", "--help"]);
    let text = stdout(&help);
    assert!(text.contains("--use-kube"), "{text}");
    assert!(text.contains("sluice never reads a cluster"), "{text}");
}

#[test]
fn analyze_json_and_yaml_are_istioctls_shapes() {
    let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], &["-o", "json"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(
        r.stdout,
        "[\n\t{\n\t\t\"code\": \"IST0174\",\n\t\t\"documentationUrl\": \"https://istio.io/latest/docs/reference/config/analysis/ist0174/?ref=istioctl-analyze\",\n\t\t\"level\": \"Warning\",\n\t\t\"message\": \"The host nowhere.example.com defined in the DestinationRule does not match any services in the mesh.\",\n\t\t\"origin\": \"DestinationRule default/nowhere\",\n\t\t\"reference\": \"dr.yaml:6\"\n\t}\n]\n"
    );
    assert_eq!(r.stderr, "");

    // sigs.k8s.io/yaml: keys sorted, long plain strings folded after column 80, and the output
    // followed by an empty line (istioctl prints it with Println).
    let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], &["-o", "YAML"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(
        r.stdout,
        "- code: IST0174\n  documentationUrl: https://istio.io/latest/docs/reference/config/analysis/ist0174/?ref=istioctl-analyze\n  level: Warning\n  message: The host nowhere.example.com defined in the DestinationRule does not match\n    any services in the mesh.\n  origin: DestinationRule default/nowhere\n  reference: dr.yaml:6\n\n"
    );

    // A message with `: ` in it is single-quoted; an error still exits 79 in JSON and YAML
    // (istioctl exits 0 there, istio/istio#35054).
    let r = analyze_in(&[("vs.yaml", TWO_NAMESPACES)], &["-o", "yaml"]);
    assert_eq!(r.code, Some(79));
    assert!(
        r.stdout
            .contains("  message: 'Referenced host not found: \"storefront-backend\"'\n"),
        "{}",
        r.stdout
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&analyze_in(&[("vs.yaml", TWO_NAMESPACES)], &["-o", "json"]).stdout)
            .unwrap();
    assert_eq!(parsed.as_array().map(Vec::len), Some(1));

    // Nothing to say: `[]`.
    let r = analyze_in(
        &[("dr.yaml", WARNING_ONLY)],
        &["-o", "json", "--output-threshold", "Error"],
    );
    assert_eq!(r.stdout, "[]\n");
    let r = analyze_in(
        &[("dr.yaml", WARNING_ONLY)],
        &["-o", "yaml", "--output-threshold", "Error"],
    );
    assert_eq!(r.stdout, "[]\n\n");
    let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], &["-o", "xml"]);
    assert_eq!(r.code, Some(2));
}

#[test]
fn analyze_output_threshold_hides_lower_levels() {
    let files = [("vs.yaml", TWO_NAMESPACES), ("dr.yaml", WARNING_ONLY)];
    let r = analyze_in(&files, &[]);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    for level in ["Error", "error", "ERROR"] {
        let r = analyze_in(&files, &["--output-threshold", level]);
        assert_eq!(r.code, Some(79));
        assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
        assert!(r.stdout.starts_with("Error [IST0101]"), "{}", r.stdout);
    }
    // The warning hidden, nothing is left: istioctl says no issues (and exits 0 on warnings).
    let r = analyze_in(
        &[("dr.yaml", WARNING_ONLY)],
        &["--output-threshold", "Error"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "\n"));
    assert_eq!(
        r.stderr,
        "\u{2714} No validation issues found when analyzing dr.yaml.\n"
    );
    let r = analyze_in(
        &[("dr.yaml", WARNING_ONLY)],
        &["--output-threshold", "Fatal"],
    );
    assert_eq!(r.code, Some(2));
}

#[test]
fn analyze_failure_threshold_sets_exit_79() {
    let r = analyze_in(&[("dr.yaml", WARNING_ONLY)], &[]);
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stderr, "");
    for level in ["Warning", "Info", "info"] {
        let r = analyze_in(
            &[("dr.yaml", WARNING_ONLY)],
            &["--failure-threshold", level],
        );
        assert_eq!(r.code, Some(79), "{level}");
        assert_eq!(r.stderr, ISSUES_DEFAULT);
    }
    // The failure threshold looks at messages the output threshold hides.
    let r = analyze_in(
        &[("dr.yaml", WARNING_ONLY)],
        &[
            "--failure-threshold",
            "Warning",
            "--output-threshold",
            "Error",
        ],
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(79), "\n"));
    let r = analyze_in(
        &[("vs.yaml", TWO_NAMESPACES)],
        &["--failure-threshold", "Error"],
    );
    assert_eq!(r.code, Some(79));
}

#[test]
fn analyze_recursive_flag_is_accepted_and_directories_are_always_recursed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/dr.yaml"), WARNING_ONLY).unwrap();
    let root = dir.path().to_str().unwrap();
    for args in [
        vec!["analyze", root],
        vec!["analyze", "-R", root],
        vec!["analyze", "--recursive", root],
    ] {
        let out = sluice(&args);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            stdout(&out).contains("[IST0174] (DestinationRule default/nowhere "),
            "{args:?}: {}",
            stdout(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("The recursive flag has been removed and is hardcoded to true"),
            args.len() == 3,
            "{stderr}"
        );
    }
}

#[test]
fn analyze_suppress_drops_matching_messages() {
    let files = [("vs.yaml", TWO_NAMESPACES)];
    let r = analyze_in(
        &files,
        &[
            "-A",
            "--suppress",
            "IST0101=VirtualService default/storefront",
        ],
    );
    assert_eq!(r.code, Some(79));
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("prod/ledger"), "{}", r.stdout);

    let r = analyze_in(
        &files,
        &[
            "-A",
            "-S",
            "IST0101=VirtualService *",
            "-S",
            "IST0102=Namespace x",
        ],
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "\n"), "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "\u{2714} No validation issues found when analyzing vs.yaml.\n"
    );

    // Another code on the resource does not suppress; an unknown code is warned about.
    let r = analyze_in(&files, &["-S", "IST0999=VirtualService default/storefront"]);
    assert_eq!(r.code, Some(79));
    assert!(r.stderr.starts_with("Warning: Supplied message code 'IST0999' is an unknown message code and will not have any effect.\n"), "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1);

    let r = analyze_in(&files, &["-S", "IST0101"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "Error: IST0101 is not a valid suppression value. See sluice analyze --help\n"
    );

    // The galley.istio.io/analyze-suppress annotation silences codes on its resource.
    let annotated = TWO_NAMESPACES.replace(
        "  name: storefront\n",
        "  name: storefront\n  annotations:\n    galley.istio.io/analyze-suppress: IST0102,IST0101\n",
    );
    let r = analyze_in(&[("vs.yaml", &annotated)], &["-A"]);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("prod/ledger"), "{}", r.stdout);
}

#[test]
fn analyze_reads_stdin_skips_other_extensions_and_fails_on_missing_paths() {
    let mut child = Command::new(SLUICE)
        .args(["analyze", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(TWO_NAMESPACES.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(79));
    assert!(
        stdout(&out).starts_with("Error [IST0101] (VirtualService default/storefront -:10) "),
        "{}",
        stdout(&out)
    );

    let r = analyze_in(
        &[("notes.txt", TWO_NAMESPACES), ("dr.yaml", WARNING_ONLY)],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert!(r.stdout.starts_with("Warning [IST0174]"), "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "Skipping file notes.txt, recognized file extensions are: [.json .yaml .yml]\n"
    );

    let out = sluice(&["analyze", "/nonexistent/vs.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: stat /nonexistent/vs.yaml: no such file or directory\n"
    );
}

#[test]
fn analyze_color_marks_levels_as_istioctl_does() {
    let files = [("vs.yaml", TWO_NAMESPACES), ("dr.yaml", WARNING_ONLY)];
    let r = analyze_in(&files, &["--color"]);
    assert!(
        r.stdout.starts_with("\x1b[1;31mError\x1b[0m [IST0101] "),
        "{:?}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\n\x1b[33mWarning\x1b[0m [IST0174] "),
        "{:?}",
        r.stdout
    );
    // Not a terminal: no color.
    let r = analyze_in(&files, &[]);
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
    let r = analyze_in(&files, &["--color=false"]);
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
}

/// A Gateway whose second server is refused by validation, or carries an unknown field, or a
/// value of the wrong type; a VirtualService binds to it.
fn gateway_and_route(second_server: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [www.example.com]
{second_server}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: web
spec:
  hosts: [web.internal.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: www
spec:
  hosts: [www.example.com]
  gateways: [edge]
  http:
  - route:
    - destination:
        host: web.internal.example
"
    )
}

#[test]
fn analyze_invalid_resources_still_exist_for_other_analyzers() {
    // Refused by validation: reported, and still the Gateway the route names.
    let bad_protocol = gateway_and_route(
        "  - port: {number: 80, name: http-alt, protocol: FTP}\n    hosts: [api.example.com]\n",
    );
    let r = analyze_in(&[("gw.yaml", &bad_protocol)], &[]);
    assert_eq!(r.code, Some(79));
    assert_eq!(
        r.stdout,
        "Error [IST0106] (Gateway default/edge gw.yaml:10) Schema validation error: spec.servers[1].port.protocol: invalid protocol \"FTP\", supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS\n"
    );

    // An unknown field: Istio's decoder ignores it, so the Gateway exists; sluice reports it.
    let typo = gateway_and_route(
        "  - port: {number: 80, name: http-alt, protocol: HTTP}\n    hosts: [api.example.com]\n    tsl:\n      httpsRedirect: true\n",
    );
    let r = analyze_in(&[("gw.yaml", &typo)], &[]);
    assert_eq!(r.code, Some(79));
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(
        r.stdout.starts_with("Error [IST0106] (Gateway default/edge gw.yaml:12) Schema validation error: spec.servers[1].tsl: unknown field `tsl`"),
        "{}",
        r.stdout
    );

    // Two unknown fields in one document (decoding stops at the first): both reported, and
    // what remains is validated.
    let two = typo.replace("    tsl:\n", "    bnd: 0.0.0.0\n    tsl:\n");
    let r = analyze_in(&[("gw.yaml", &two)], &[]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].contains("(Gateway default/edge gw.yaml:12) Schema validation error: spec.servers[1].bnd: unknown field `bnd`"), "{}", r.stdout);
    assert!(lines[1].contains("(Gateway default/edge gw.yaml:13) Schema validation error: spec.servers[1].tsl: unknown field"), "{}", r.stdout);

    // A value of the wrong type: Istio cannot decode the document and leaves it out, so the
    // route's gateway is missing.
    let wrong_type = gateway_and_route(
        "  - port: {number: eighty, name: http-alt, protocol: HTTP}\n    hosts: [api.example.com]\n",
    );
    let r = analyze_in(&[("gw.yaml", &wrong_type)], &[]);
    assert_eq!(r.code, Some(79));
    assert!(
        r.stdout.contains("Error [IST0101] (VirtualService default/www gw.yaml:28) Referenced gateway not found: \"edge\"\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Error [IST0106] (Gateway default/edge gw.yaml:10) Schema validation error: spec.servers[1].port.number: "),
        "{}",
        r.stdout
    );
}

#[test]
fn analyze_duplicate_definitions_use_the_first_valid_one() {
    let gateway = |port: u32| {
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [www.example.com]\n")
    };
    let route = gateway_and_route("")
        .split_once("---\n")
        .unwrap()
        .1
        .to_string();
    // The invalid first definition is reported twice (invalid; not used), the valid second one
    // is used: nothing about the route.
    let r = analyze_in(
        &[
            ("a.yaml", &gateway(0)),
            ("b.yaml", &gateway(80)),
            ("c.yaml", &route),
        ],
        &[],
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(
        lines[0].starts_with("Error [IST0106] (Gateway default/edge a.yaml:7) "),
        "{}",
        r.stdout
    );
    assert_eq!(
        lines[1],
        "Warning [IST0133] (Gateway default/edge a.yaml:3) Schema validation warning: metadata.name: Gateway default/edge is also defined in b.yaml; that definition is used"
    );
    // Two valid definitions: the first is used.
    let r = analyze_in(&[("a.yaml", &gateway(80)), ("b.yaml", &gateway(8080))], &[]);
    assert_eq!(
        r.stdout,
        "Warning [IST0133] (Gateway default/edge b.yaml:3) Schema validation warning: metadata.name: Gateway default/edge is also defined in a.yaml; that definition is used\n"
    );
}

const EXPLAIN_CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route:
    - destination: {host: httpbin.org}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

#[test]
fn explain_routed_and_blocked_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), EXPLAIN_CONFIG).unwrap();
    let cfg = dir.path().to_str().unwrap();
    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "--from",
        "default/app=sleep",
        "http://httpbin.org/get",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Cluster:   outbound|80||httpbin.org"),
        "{text}"
    );
    assert!(
        text.contains("Rule:      VirtualService default/httpbin http[0]"),
        "{text}"
    );
    assert!(text.contains("Timeout:   3s"), "{text}");

    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "--from",
        "default/app=sleep",
        "http://example.org/",
    ]);
    let text = stdout(&out);
    assert!(text.contains("block_all"), "{text}");

    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "-o",
        "json",
        "tcp://192.0.2.7:5432",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "blocked");

    let bad = sluice(&["explain", "--config", cfg, "ftp://x:1"]);
    assert_eq!(bad.status.code(), Some(1));
}

const METRICS: &str = "# TYPE sluice_egress_blocked_total counter
sluice_egress_blocked_total{source_workload=\"sleep\",destination_host=\"httpbin.org\",port=\"80\",protocol=\"http\"} 4
sluice_egress_blocked_total{source_workload=\"sleep\",destination_host=\"api.example.com\",port=\"443\",protocol=\"tls\"} 1
";

/// Serves `METRICS` on 127.0.0.1:0 for `n` requests; returns the port.
fn metrics_server(n: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{METRICS}",
                METRICS.len()
            );
        }
    });
    port
}

#[test]
fn suggest_prints_service_entries_for_blocked_hosts() {
    let port = metrics_server(2);
    let out = sluice(&["suggest", "--admin", &format!("127.0.0.1:{port}")]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# blocked for: sleep (4)"), "{text}");
    assert!(text.contains("  name: httpbin-org\n"), "{text}");
    assert!(
        text.contains("    name: tls-443\n    protocol: TLS\n"),
        "{text}"
    );

    // What it prints is accepted by `sluice validate`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("suggested.yaml");
    std::fs::write(&file, &text).unwrap();
    let v = sluice(&["validate", file.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));

    let out = sluice(&[
        "suggest",
        "--stats",
        &format!("http://127.0.0.1:{port}/stats/prometheus"),
    ]);
    assert!(stdout(&out).contains("api-example-com"));

    let refused = sluice(&["suggest", "--admin", "127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(1));
}

/// `--meshConfigFile` must be a readable mesh config: a missing file or one that is not a mesh
/// config is an error (exit 1) that names the file, never an analysis without it.
#[test]
fn analyze_mesh_config_file_problems_name_the_file() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: default}\nspec:\n  hosts: [db.example]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: DNS\n";
    let run = analyze_in(&[("se.yaml", se)], &["--meshConfigFile", "missing.yaml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("missing.yaml"), "{}", run.stderr);

    let run = analyze_in(
        &[
            ("mesh.yaml", "defaultConfig: [not, a, mapping]\n"),
            ("se.yaml", se),
        ],
        &["--meshConfigFile", "mesh.yaml"],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("mesh.yaml:1") && run.stderr.contains("defaultConfig"),
        "{}",
        run.stderr
    );
}
