//! The `sluice` binary's user-facing commands: `validate` output and exit codes, and the demo's
//! three promised behaviours (allowed, blocked, timeout) through its explicit proxy with curl.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write test file");
    path
}

#[test]
fn validate_reports_file_line_resource_field_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: httpbin-ext\nspec:\n  hosts:\n  - httpbin.org\n  http:\n  - timeout: 3s\n    route:\n    - destination:\n        hots: httpbin.org\n",
    );
    let out = Command::new(SLUICE)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}");
    let expected_prefix = format!("{}:12: VirtualService default/httpbin-ext: ", bad.display());
    assert!(stdout.contains(&expected_prefix), "stdout: {stdout}");
    assert!(stdout.contains("did you mean"), "stdout: {stdout}");

    let good = write(
        dir.path(),
        "good.yaml",
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: httpbin-ext\nspec:\n  hosts:\n  - httpbin.org\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: DNS\n  location: MESH_EXTERNAL\n",
    );
    let out = Command::new(SLUICE)
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// istioctl's `-f`, a one-line summary when all is well, an empty folder said to be empty, and
/// a misspelled kind refused with a suggestion (it would otherwise silently not apply).
#[test]
fn validate_takes_f_sums_up_and_refuses_misspelled_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a.example.com], http: [{route: [{destination: {host: a.example.com}}]}]}\n",
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(SLUICE)
            .arg("validate")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, _) = run(&["-f".as_ref(), good.as_os_str()]);
    assert_eq!((code, stdout.as_str()), (Some(0), "✔ 2 resources valid\n"));

    // A valid Telemetry is a resource like any other: sluice enforces it, no warning.
    let telemetry = write(
        dir.path(),
        "telemetry.yml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec: {accessLogging: [{providers: [{name: envoy}]}]}\n",
    );
    let (code, stdout, _) = run(&["-f".as_ref(), telemetry.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        !stdout.contains("SLU0003") && stdout.ends_with("✔ 1 resource valid\n"),
        "{stdout}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, stdout, _) = run(&[empty.as_os_str()]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        format!("no resources found in {}\n", empty.display())
    );

    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("nothing to check"), "{stderr}");

    let typo = write(
        dir.path(),
        "typo.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntery\nmetadata: {name: a}\nspec: {hosts: [b.example.com]}\n",
    );
    let (code, stdout, _) = run(&["-f".as_ref(), typo.as_os_str()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("ServiceEntery default/a: kind: unknown kind ServiceEntery (did you mean ServiceEntry?)"),
        "{stdout}"
    );
}

/// Kills the demo when the test ends, however it ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> (String, Duration) {
    let start = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl is required (apt-get install curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn demo_shows_allowed_blocked_and_timeout() {
    let proxy_port = "15480";
    let admin_port = "15400";
    let demo = Child(
        Command::new(SLUICE)
            .args(["demo", "--port", proxy_port, "--admin-port", admin_port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&["-x", &proxy, "http://httpbin.demo/headers"]).0 != "200" {
        assert!(
            Instant::now() < deadline,
            "the demo never served httpbin.demo"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(curl(&["-x", &proxy, "http://blocked.example/"]).0, "502");
    let (code, took) = curl(&["-x", &proxy, "http://httpbin.demo/delay/3"]);
    assert_eq!(code, "504");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    drop(demo);
}

#[test]
fn gateway_help_lists_the_contract_flags() {
    let out = Command::new(SLUICE)
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for flag in [
        "--config",
        "--namespace",
        "--labels",
        "--admin-port",
        "--status-port",
        "--stats-port",
        "--bind",
        "istio-system",
        "istio=ingressgateway",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET on loopback; returns the status line and body, or None if the port is
/// not answering.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn gateway_starts_reports_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, status, stats) = (free_port(), free_port(), free_port());
    let child = Command::new(SLUICE)
        .args(["gateway", "--config"])
        .arg(dir.path())
        .args([
            "--admin-port",
            &admin.to_string(),
            "--status-port",
            &status.to_string(),
            "--stats-port",
            &stats.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Some(r) = http_get(status, "/healthz/ready") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "gateway never answered on {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let listeners = http_get(admin, "/listeners").unwrap();
    assert!(listeners.starts_with("HTTP/1.1 200"), "{listeners}");

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
