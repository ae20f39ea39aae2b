//! Memory comes back after a flood of idle connections: the real `sluice sidecar` binary, its
//! explicit-proxy port flooded with thousands of keep-alive connections that each sent one
//! request, then all closed. Its resident memory must fall back near where it started, not stay
//! at the peak (as it did with glibc's malloc, which keeps freed heap pages resident).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Enough connections for ~80 MB of growth (tens of KiB each), few enough for a debug build.
const CONNECTIONS: usize = 3000;
/// After closing, at most this fraction of the flood's growth may stay resident.
const KEPT_FRACTION: f64 = 1.0 / 3.0;
/// How long the proxy may take to give the memory back (jemalloc purges unused pages as they
/// age, over ~10 s): a bound on the wait, not an assertion of speed.
const RETURN_WITHIN: Duration = Duration::from_secs(90);

/// Kills the proxy when the test ends, however it ends.
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
        .expect("local address of the ephemeral listener")
        .port()
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no VmRSS line:\n{status}"))
}

/// Both this test and the proxy (which inherits the limit) hold one descriptor per connection.
fn raise_open_files_limit(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned rlimit struct.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            0,
            "getrlimit(RLIMIT_NOFILE)"
        );
        if lim.rlim_cur >= needed {
            return;
        }
        assert!(
            lim.rlim_max >= needed,
            "this test needs {needed} open files but the hard limit (ulimit -Hn) is {}; raise it",
            lim.rlim_max
        );
        lim.rlim_cur = needed;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "setrlimit(RLIMIT_NOFILE, {needed})"
        );
    }
}

/// Sends one absolute-form request through the explicit proxy and reads the whole answer,
/// leaving the connection open. Returns the connection and the status code.
fn request(port: u16) -> std::io::Result<(TcpStream, u16)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET http://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n")?;
    let mut r = BufReader::with_capacity(1024, s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<u64>().ok();
            }
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("answer without content-length"))?;
    std::io::copy(&mut r.by_ref().take(length), &mut std::io::sink())?;
    Ok((s, status))
}

#[test]
fn rss_falls_back_after_a_flood_of_idle_connections_closes() {
    raise_open_files_limit(2 * CONNECTIONS as u64 + 512);
    let dir = tempfile::tempdir().expect("temporary config dir");
    // REGISTRY_ONLY without any ServiceEntry: every request is answered by the proxy itself
    // (502), so the flood measures what the proxy holds per idle client connection.
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\n\
         data:\n  mesh: |-\n    accessLogFile: \"\"\n    outboundTrafficPolicy:\n      mode: REGISTRY_ONLY\n",
    )
    .expect("write mesh.yaml");
    let (proxy, outbound, admin, status, stats) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let child = Command::new(SLUICE)
        .args(["sidecar", "--config"])
        .arg(dir.path())
        .args(["--proxy-port", &proxy.to_string()])
        .args(["--outbound-port", &outbound.to_string()])
        .args(["--inbound-port", "0"])
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &status.to_string()])
        .args(["--stats-port", &stats.to_string()])
        // Idle connections must stay open for the whole flood, however slow the build.
        .args(["--request-headers-timeout", "300s", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice sidecar");
    let child = Child(child);
    let pid = child.0.id();

    // Ready once the mesh config is accepted: the first request is then a 502 from policy.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match request(proxy) {
            Ok((_, 502)) => break,
            other => assert!(
                Instant::now() < deadline,
                "the sidecar never answered 502 for a blocked host on {proxy}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_kb(pid);

    let open: Vec<TcpStream> = std::thread::scope(|s| {
        let threads = 4;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..CONNECTIONS)
                        .step_by(threads)
                        .map(|i| match request(proxy) {
                            Ok((conn, 502)) => conn,
                            Ok((_, code)) => panic!("connection {i}: status {code}, not 502"),
                            Err(e) => panic!("connection {i} through the proxy: {e}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("flood thread"))
            .collect()
    });
    assert_eq!(open.len(), CONNECTIONS);
    let peak = rss_kb(pid);
    let grown = peak.saturating_sub(baseline);
    // A flood that barely moves RSS would make the assertion below meaningless.
    assert!(
        grown >= CONNECTIONS as u64 * 4,
        "{CONNECTIONS} idle connections grew RSS only from {baseline} to {peak} KiB; \
         the test cannot tell whether memory comes back"
    );

    drop(open);
    let limit = baseline + (grown as f64 * KEPT_FRACTION) as u64;
    let deadline = Instant::now() + RETURN_WITHIN;
    let mut after = rss_kb(pid);
    while after > limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = rss_kb(pid);
    }
    assert!(
        after <= limit,
        "RSS stayed at {after} KiB {}s after {CONNECTIONS} idle connections closed \
         (baseline {baseline} KiB, peak {peak} KiB; allowed: {limit} KiB, baseline + {:.0}% \
         of the growth)",
        RETURN_WITHIN.as_secs(),
        KEPT_FRACTION * 100.0
    );
}
