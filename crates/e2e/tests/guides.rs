//! The guides in `docs/` run as written: each guide's ```` ```sh ```` blocks, joined into one
//! bash script, run as root in a fresh pod network namespace whose DNS serves `httpbin.org`,
//! `www.google.com`, `edition.cnn.com` and `worldclockapi.com` from the test's external
//! namespace (see [`sluice_e2e::guide`] for the `# expect:` checks). The reader's machine differs
//! from the pod only in what a reader has anyway: `sluice` and httpbin on the PATH, a default
//! route, and a CA that trusts the external hosts (here the test's, through `SSL_CERT_FILE` and
//! `CURL_CA_BUNDLE`).
//!
//! Every guide in docs/ is either run here or says why not, so a new guide cannot be forgotten.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::guide::{expectations, runnable_lines, script, GUIDE_DONE};
use sluice_e2e::prereq::{repo_root, sluice_bin, venv_dir};
use sluice_e2e::TestEnv;

/// The guides that are not run, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "configuration.md",
        "a reference of flags and files, no steps",
    ),
    (
        "istio-conformance.md",
        "measures against an Istio checkout, which a fresh machine does not have",
    ),
    (
        "kubernetes.md",
        "needs a Kubernetes cluster (the control plane's API source is tested in kube_source)",
    ),
    (
        "kubernetes-deploy.md",
        "needs a Kubernetes cluster and an image builder (manifests are checked in the deploy tests)",
    ),
    (
        "kubernetes-injection.md",
        "needs a Kubernetes cluster (injection is checked in the kube_webhook and golden tests)",
    ),
    (
        "vm.md",
        "installs a systemd unit on the host (the unit is checked by systemd-analyze in the vm test)",
    ),
];

/// The guides that are run.
const RUN: &[&str] = &[
    "egress-control.md",
    "ingress-gateway.md",
    "egress-gateway.md",
    "mesh-services.md",
    "control-plane.md",
    "service-graph.md",
    "security.md",
    "tracing.md",
];

/// How long one guide may take in all.
const GUIDE_TIMEOUT: Duration = Duration::from_secs(150);

fn docs_dir() -> PathBuf {
    repo_root().join("docs")
}

#[test]
fn every_guide_in_docs_is_run_or_says_why_not() {
    let mut on_disk: Vec<String> = std::fs::read_dir(docs_dir())
        .expect("read docs/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = RUN
        .iter()
        .copied()
        .chain(NOT_RUN.iter().map(|(n, _)| *n))
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(
        on_disk,
        listed,
        "every docs/*.md must be in RUN or NOT_RUN (with the reason) in {}",
        file!()
    );
    for guide in RUN {
        let doc = std::fs::read_to_string(docs_dir().join(guide)).expect("read guide");
        let lines = runnable_lines(&doc);
        assert!(
            expectations(&lines) >= 3,
            "{guide}: a guide that is run must check what it shows (at least 3 `# expect:` lines)"
        );
    }
}

/// Runs `guide`'s shell blocks in a fresh environment and fails with its output if a check
/// failed, the script stopped early or it ran too long.
fn run_guide(guide: &str) {
    let env = TestEnv::new(&format!("guide-{}", guide.trim_end_matches(".md")));
    let doc = std::fs::read_to_string(docs_dir().join(guide)).expect("read guide");
    let lines = runnable_lines(&doc);
    let script_path = env.dir().join("guide.sh");
    std::fs::write(&script_path, script(&format!("docs/{guide}"), &lines)).expect("write script");
    // The guides write to /etc/hosts (the app-side DNS of mesh services): give the pod a hosts
    // file of its own, and make sure it is the one the script sees before letting it run.
    let own_hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# pod of the guide test\n";
    env.pod.set_hosts(own_hosts);
    assert_eq!(
        env.pod.run("cat", &["/etc/hosts"]),
        own_hosts,
        "the pod must see its own /etc/hosts"
    );
    // A reader's machine has a default route; the pod's leads to the external namespace, which
    // forwards nothing (so nothing leaves the test).
    env.pod
        .ip(&["route", "add", "default", "via", &env.hosts.dns.to_string()]);
    let home = env.dir().join("home");
    std::fs::create_dir_all(&home).expect("create home");
    // A reader stops a curl that hangs; the script's curls give up on their own.
    std::fs::write(home.join(".curlrc"), "max-time = 8\n").expect("write .curlrc");

    let (status, output) = run_script(&env, &script_path, &home);
    eprintln!("--- docs/{guide}, as run:\n{output}");
    let ok = status == Some(0) && output.contains(GUIDE_DONE);
    assert!(
        ok,
        "docs/{guide} did not run as written (exit {status:?}; its output is above)\n--- script: {}",
        script_path.display()
    );
}

/// Runs the script in the pod as its own process group, so that what it leaves running in the
/// background (proxies, backends) is stopped with it. Returns the exit code (`None`: killed at the
/// timeout) and everything it printed.
fn run_script(env: &TestEnv, script_path: &Path, home: &Path) -> (Option<i32>, String) {
    let sluice_dir = sluice_bin().parent().expect("sluice dir").to_path_buf();
    let path = format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        sluice_dir.display(),
        venv_dir().join("bin").display()
    );
    let log_path = env.dir().join("guide.out");
    let log = std::fs::File::create(&log_path).expect("create guide output");
    let mut cmd: Command = env.pod.cmd("bash");
    cmd.arg(script_path)
        .current_dir(home)
        .env("PATH", path)
        .env("HOME", home)
        .env("TMPDIR", env.dir())
        .env("SSL_CERT_FILE", &env.pki.ca_cert)
        .env("CURL_CA_BUNDLE", &env.pki.ca_cert)
        .env_remove("SLUICE_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().expect("start bash in the pod");
    let pgid = child.id() as i32;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the guide") {
            break s.code();
        }
        if started.elapsed() > GUIDE_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // What the guide left in the background: SIGTERM (proxies drain), then SIGKILL.
    // SAFETY: kill(2) on our own child's process group.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let mut output = String::new();
    let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut output));
    (status, output)
}

#[test]
fn guide_egress_control_runs_as_written() {
    run_guide("egress-control.md");
}

#[test]
fn guide_ingress_gateway_runs_as_written() {
    run_guide("ingress-gateway.md");
}

#[test]
fn guide_egress_gateway_runs_as_written() {
    run_guide("egress-gateway.md");
}

#[test]
fn guide_mesh_services_runs_as_written() {
    run_guide("mesh-services.md");
}

#[test]
fn guide_control_plane_runs_as_written() {
    run_guide("control-plane.md");
}

#[test]
fn guide_service_graph_runs_as_written() {
    run_guide("service-graph.md");
}

#[test]
fn guide_security_runs_as_written() {
    run_guide("security.md");
}

#[test]
fn guide_tracing_runs_as_written() {
    run_guide("tracing.md");
}
