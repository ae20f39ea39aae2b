//! Installing and everyday use of the binary: the shell completion scripts load in the shells,
//! the manual pages render without a formatter warning, colour appears only on a terminal and
//! never with NO_COLOR, and the VM's systemd unit (deploy/vm/) runs commands and flags the binary
//! takes.
//!
//! Needs (a missing one fails the test, naming it; scripts/install-test-deps.sh installs them):
//! bash, man (man-db) and groff (groff-base), systemd-analyze (systemd).

use std::io::Read as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const INSTALL: &str = "scripts/install-test-deps.sh";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The program `name`, or a failure that says how to get it.
fn require(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is required (Debian package {package}; {INSTALL} installs it)")
        })
}

fn sluice(args: &[&str]) -> Output {
    let out = Command::new(SLUICE)
        .args(args)
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --- completion ---------------------------------------------------------------------------------

#[test]
fn bash_completion_loads_and_completes_subcommands_and_flags() {
    let bash = require("bash", "bash");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sluice.bash");
    std::fs::write(&script, sluice(&["completion", "bash"]).stdout).unwrap();

    let syntax = Command::new(&bash).arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));

    // Sourced: the completion is registered, and asking it to complete `sluice sid` and
    // `sluice sidecar --conf` answers what the binary takes.
    let probe = r#"
        source "$1"
        complete -p sluice
        COMP_WORDS=(sluice sid); COMP_CWORD=1; COMP_LINE="sluice sid"; COMP_POINT=${#COMP_LINE}
        _sluice sluice sid sluice; echo "words: ${COMPREPLY[*]}"
        COMP_WORDS=(sluice sidecar --conf); COMP_CWORD=2; COMP_LINE="sluice sidecar --conf"
        COMP_POINT=${#COMP_LINE}
        _sluice sluice --conf sidecar; echo "flags: ${COMPREPLY[*]}"
    "#;
    let out = Command::new(&bash)
        .args(["-c", probe, "probe"])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("complete -o bashdefault -o default -o nosort -F _sluice sluice"),
        "{stdout}"
    );
    assert!(stdout.contains("words: sidecar"), "{stdout}");
    assert!(stdout.contains("flags: --config"), "{stdout}");
}

#[test]
fn zsh_and_fish_scripts_are_generated_for_the_binary() {
    let zsh = text(&sluice(&["completion", "zsh"]).stdout);
    assert!(zsh.starts_with("#compdef sluice"), "{zsh}");
    assert!(zsh.contains("--config"), "{zsh}");
    let fish = text(&sluice(&["completion", "fish"]).stdout);
    assert!(fish.contains("complete -c sluice"), "{fish}");
    assert!(fish.contains("-l config"), "{fish}");
    let out = Command::new(SLUICE)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

// --- man ----------------------------------------------------------------------------------------

/// Renders `page` with man (man-db) as a user would, with every formatter warning on; returns
/// the text, failing on any warning.
fn render_man(page: &Path) -> String {
    let man = require("man", "man-db");
    require("groff", "groff-base");
    let out = Command::new(man)
        .args(["--warnings=all", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", page.display());
    assert!(stderr.is_empty(), "{}: warnings: {stderr}", page.display());
    // groff alone, without man's preconv step: the pages are plain ASCII roff.
    let groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .unwrap();
    let stderr = text(&groff.stderr);
    assert!(
        groff.status.success() && stderr.is_empty(),
        "{}: groff: {stderr}",
        page.display()
    );
    text(&out.stdout)
}

#[test]
fn man_prints_every_command_and_renders_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("sluice.1");
    let roff = sluice(&["man"]).stdout;
    assert!(roff.is_ascii());
    std::fs::write(&page, &roff).unwrap();
    let rendered = render_man(&page);
    for want in [
        "sluice - Istio",
        "sluice-sidecar - Run next to an application",
        "sluice-gateway",
        "sluice-ca-issue",
        "sluice-completion",
        "--config <FILE|DIR>",
        "--termination-drain-duration",
    ] {
        assert!(rendered.contains(want), "{want:?} not in:\n{rendered}");
    }
    // The help texts' non-ASCII characters come through.
    assert!(rendered.contains('→'), "{rendered}");
}

#[test]
fn man_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man1");
    let out = sluice(&["man", "--dir", man1.to_str().unwrap()]);
    let listed = text(&out.stdout);
    let mut names: Vec<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "sluice.1",
        "sluice-sidecar.1",
        "sluice-gateway.1",
        "sluice-init.1",
        "sluice-ca-init.1",
        "sluice-proxy-config.1",
        "sluice-man.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        assert!(listed.contains(&format!("man1/{want}\n")), "{listed}");
    }
    // No page for clap's own `help` command.
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    for name in &names {
        let rendered = render_man(&man1.join(name));
        let title = name.trim_end_matches(".1");
        assert!(rendered.starts_with(&format!("{title}(1)")), "{rendered}");
    }
    let sidecar = render_man(&man1.join("sluice-sidecar.1"));
    assert!(sidecar.contains("--outbound-port"), "{sidecar}");
}

// --- colour -------------------------------------------------------------------------------------

/// A pseudo-terminal: the parent's end, and the child's end to give as stdout and stderr.
fn pty() -> (std::fs::File, OwnedFd) {
    let (mut parent, mut child) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given ints; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut parent,
            &mut child,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(parent),
            OwnedFd::from_raw_fd(child),
        )
    }
}

/// Runs sluice with stdout and stderr on a terminal; what the terminal showed.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let (mut parent, child) = pty();
    let mut cmd = Command::new(SLUICE);
    cmd.args(args)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::from(child.try_clone().unwrap()))
        .stderr(Stdio::from(child));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = cmd.spawn().unwrap();
    drop(cmd);
    let status = proc.wait().unwrap();
    assert!(status.code().is_some(), "sluice {args:?}: {status}");
    // Every writer is gone: the terminal gives what was written, then EIO.
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match parent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => shown.extend_from_slice(&buf[..n]),
        }
    }
    text(&shown)
}

/// A config with an error for `analyze` (coloured `Error` level) that also makes sluice log a
/// warning on stderr through its logger (`validate` reports the file).
fn broken_config(dir: &Path) -> PathBuf {
    let file = dir.join("vs.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: [a.example]
  gateways: [missing-gateway]
  http:
  - route: [{destination: {host: a.example}}]
",
    )
    .unwrap();
    file
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let file = broken_config(dir.path());
    let file = file.to_str().unwrap();

    // analyze colours its levels on a terminal …
    let shown = on_terminal(&["analyze", "--use-kube=false", file], &[]);
    assert!(
        shown.contains("\x1b["),
        "no colour on a terminal: {shown:?}"
    );
    // … not with NO_COLOR, and not when piped.
    let shown = on_terminal(&["analyze", "--use-kube=false", file], &[("NO_COLOR", "1")]);
    assert!(shown.contains("Error"), "{shown:?}");
    assert!(
        !shown.contains('\x1b'),
        "colour despite NO_COLOR: {shown:?}"
    );
    let piped = Command::new(SLUICE)
        .args(["analyze", "--use-kube=false", file])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let all = [piped.stdout, piped.stderr].concat();
    assert!(text(&all).contains("Error"), "{}", text(&all));
    assert!(!all.contains(&0x1b), "{}", text(&all));

    // sluice's own log lines (stderr): explain's config load, at --log-level info.
    let logs = |env: &[(&str, &str)]| {
        on_terminal(
            &[
                "explain",
                "--log-level",
                "info",
                "--config",
                file,
                "http://a.example/",
            ],
            env,
        )
    };
    let shown = logs(&[]);
    assert!(
        shown.contains("\x1b[") && shown.contains("INFO"),
        "log lines not coloured on a terminal: {shown:?}"
    );
    let shown = logs(&[("NO_COLOR", "1")]);
    assert!(shown.contains("INFO"), "{shown:?}");
    assert!(
        !shown.contains('\x1b'),
        "colour despite NO_COLOR: {shown:?}"
    );
}

// --- the VM's systemd unit ----------------------------------------------------------------------

/// The unit's `[Service]` settings, in order (key, value); continuation lines are not used.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The variables of an environment file (`KEY=value` lines, comments skipped).
fn env_file(text: &str) -> Vec<(String, String)> {
    unit_settings(text)
}

/// A command line as systemd runs it: `${VAR}` is one argument, `$VAR` splits on whitespace
/// (nothing when empty), the `+`/`-` prefixes go.
fn command_line(line: &str, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut args = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            args.push(lookup(name));
        } else if let Some(name) = word.strip_prefix('$') {
            args.extend(lookup(name).split_whitespace().map(str::to_string));
        } else {
            args.push(word.to_string());
        }
    }
    if let Some(first) = args.first_mut() {
        *first = first
            .trim_start_matches(['+', '-', '@', ':', '!'])
            .to_string();
    }
    args
}

#[test]
fn vm_unit_runs_init_as_root_then_the_sidecar_as_1337_with_flags_sluice_takes() {
    let root = repo_root();
    let unit = std::fs::read_to_string(root.join("deploy/vm/sluice-sidecar.service")).unwrap();
    let example = std::fs::read_to_string(root.join("deploy/vm/sidecar.env")).unwrap();
    let settings = unit_settings(&unit);
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("User"), ["1337"]);
    assert_eq!(get("Group"), ["1337"]);
    assert_eq!(get("CapabilityBoundingSet"), [""], "no capabilities");
    assert_eq!(get("AmbientCapabilities"), [""]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("EnvironmentFile"), ["-/etc/sluice/sidecar.env"]);
    let pre = get("ExecStartPre");
    assert_eq!(pre.len(), 1, "{pre:?}");
    assert!(
        pre[0].starts_with("+/usr/local/bin/sluice init "),
        "init must run as root ('+'): {pre:?}"
    );
    let start = get("ExecStart");
    assert_eq!(start.len(), 1);
    assert!(
        start[0].starts_with("/usr/local/bin/sluice sidecar "),
        "{start:?}"
    );

    // The unit's defaults, then the example file over them (as systemd orders them); the
    // example also sets extra flags, to check those too.
    let mut env: Vec<(String, String)> = get("Environment")
        .iter()
        .filter_map(|v| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(env_file(&example));
    let example_keys: Vec<String> = env_file(&example).into_iter().map(|(k, _)| k).collect();
    for (key, _) in get("Environment").iter().filter_map(|v| v.split_once('=')) {
        assert!(
            example_keys.iter().any(|k| k == key),
            "deploy/vm/sidecar.env does not document {key}"
        );
    }

    // init: the flags parse and give the rules expected (dry run: nothing is applied).
    let mut init = command_line(pre[0], &env);
    assert_eq!(init[0], "/usr/local/bin/sluice");
    init.push("--dry-run".into());
    let out = Command::new(SLUICE).args(&init[1..]).output().unwrap();
    let rules = text(&out.stdout);
    assert!(
        out.status.success(),
        "{init:?}: {}{rules}",
        text(&out.stderr)
    );
    assert!(rules.contains("--uid-owner 1337"), "{rules}");
    assert!(rules.contains("--to-ports 15001"), "{rules}");
    assert!(rules.contains("--to-ports 15006"), "{rules}");
    assert!(rules.contains("--dport 22 -j RETURN"), "{rules}");

    // sidecar: every flag and value is one `sluice sidecar` takes (clap parses them all before
    // it reaches --help), with the example's extra flags too.
    env.push((
        "SLUICE_SIDECAR_ARGS".into(),
        "--mesh-ca /etc/sluice/ca".into(),
    ));
    let mut sidecar = command_line(start[0], &env);
    sidecar.push("--help".into());
    let out = Command::new(SLUICE).args(&sidecar[1..]).output().unwrap();
    assert!(out.status.success(), "{sidecar:?}: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("--config <FILE|DIR>"));

    // systemd's own check, with the binary under test and its man pages installed (the unit's
    // Documentation= names them).
    let analyze = require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    sluice(&["man", "--dir", man1.to_str().unwrap()]);
    let local = dir.path().join("sluice-sidecar.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/sluice", SLUICE)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&local)
        .env("MANPATH", dir.path().join("man"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

// --- demo --port --------------------------------------------------------------------------------

#[test]
fn demo_help_names_port_with_proxy_port_as_alias() {
    let help = text(&sluice(&["demo", "--help"]).stdout);
    assert!(help.contains("--port <PORT>"), "{help}");
    assert!(help.contains("[alias: --proxy-port]"), "{help}");
}
