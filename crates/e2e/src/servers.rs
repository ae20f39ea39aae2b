//! Pieces every harness uses to run its backends: httpbin under gunicorn in a namespace, waiting
//! for a server to answer, and waiting for the test's dnsmasq to know a name.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::curl::Curl;
use crate::netns::Netns;
use crate::prereq::tools;
use crate::process::{LogBook, Proc};
use crate::wait::eventually;

/// `gunicorn … httpbin:app` in `ns`, listening on every `bind`, over TLS with `tls`
/// (certificate, key). `workdir` is its `--chdir` (the test's directory).
pub fn httpbin_command(
    ns: &Netns,
    workdir: &Path,
    binds: &[String],
    tls: Option<(&Path, &Path)>,
) -> Command {
    let mut cmd = ns.cmd(&tools().gunicorn);
    for b in binds {
        cmd.arg("--bind").arg(b);
    }
    cmd.args([
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        "32",
        "--graceful-timeout",
        "1",
        "--timeout",
        "120",
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        "--chdir",
    ])
    .arg(workdir);
    if let Some((cert, key)) = tls {
        cmd.arg("--certfile").arg(cert).arg("--keyfile").arg(key);
    }
    cmd.arg("httpbin:app")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Polls until a curl from `make` answers 204, within `timeout`; panics with the logs if it
/// does not, or as soon as one of `servers` exits.
pub fn wait_for_204(
    what: &str,
    timeout: Duration,
    servers: &mut [Proc],
    logs: &LogBook,
    make: impl Fn() -> Curl,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = make().max_time(2.0).run();
        if r.exit_code == 0 && r.status == 204 {
            return;
        }
        if let Some((label, status)) = servers
            .iter_mut()
            .find_map(|p| p.exited().map(|s| (p.label().to_string(), s)))
        {
            panic!(
                "{label} exited ({status}) while waiting for {what}\n{}",
                logs.dump(60)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} did not answer 204 within {timeout:?}; last try:\n{r}\n{}",
                logs.dump(60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `name` resolves to `ip` inside `ns` (through the test's dnsmasq).
pub fn wait_resolves(ns: &Netns, name: &str, ip: Ipv4Addr) {
    eventually(
        &format!("dnsmasq answers {name} → {ip} in {}", ns.name()),
        Duration::from_secs(10),
        || {
            let (ok, out) = ns.try_run("getent", &["ahostsv4", name]);
            if ok && out.split_whitespace().next() == Some(ip.to_string().as_str()) {
                Ok(())
            } else {
                Err(format!("getent ahostsv4 {name}: {out}"))
            }
        },
    );
}

/// What the server labelled `label` among `servers` wrote so far: its stdout, then its stderr.
pub fn server_log(servers: &[Proc], label: &str) -> String {
    let p = servers
        .iter()
        .find(|p| p.label() == label)
        .unwrap_or_else(|| panic!("no server labelled {label}"));
    let err = std::fs::read_to_string(p.stderr_path()).unwrap_or_default();
    format!("{}{err}", p.stdout())
}
