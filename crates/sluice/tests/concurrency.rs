//! `--concurrency N` (Istio's proxy concurrency): the real binary runs N data-plane workers and
//! reports them in the admin API's `/server_info`, as Envoy's `command_line_options` does.
//! Sidecars default to 2 workers, gateways to one per CPU.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Starts `sluice <kind>` on free loopback ports with `extra` arguments, waits for its admin
/// API and returns `/server_info`'s `command_line_options.concurrency`.
fn reported_concurrency(kind: &str, extra: &[&str]) -> u64 {
    let dir = tempfile::tempdir().expect("temporary config dir");
    let admin = free_port();
    let mut cmd = Command::new(SLUICE);
    cmd.args([kind, "--config"])
        .arg(dir.path())
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &free_port().to_string()])
        .args(["--stats-port", &free_port().to_string()])
        .args(["--log-level", "warn"])
        .env_remove("SLUICE_CONCURRENCY")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if kind == "sidecar" {
        cmd.args(["--proxy-port", &free_port().to_string()])
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--inbound-port", "0"]);
    } else {
        cmd.args(["--bind", "127.0.0.1"]);
    }
    let _child = Child(cmd.args(extra).spawn().expect("start sluice"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match get(admin, "/server_info") {
            Ok(b) => break b,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{kind}: no /server_info on 127.0.0.1:{admin}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let info: serde_json::Value = serde_json::from_str(&body).expect("/server_info is JSON");
    info["command_line_options"]["concurrency"]
        .as_u64()
        .unwrap_or_else(|| panic!("no command_line_options.concurrency in {info}"))
}

fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("unexpected answer: {out}"))),
    }
}

#[test]
fn concurrency_sets_the_data_plane_workers() {
    assert_eq!(reported_concurrency("sidecar", &["--concurrency", "3"]), 3);
    assert_eq!(reported_concurrency("gateway", &["--concurrency", "1"]), 1);
}

#[test]
fn sidecars_default_to_two_workers_and_gateways_to_one_per_cpu() {
    assert_eq!(reported_concurrency("sidecar", &[]), 2);
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(reported_concurrency("gateway", &[]), cpus);
    assert_eq!(
        reported_concurrency("sidecar", &["--concurrency", "0"]),
        cpus
    );
}
