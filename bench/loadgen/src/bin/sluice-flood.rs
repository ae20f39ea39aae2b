//! Idle-connection flood (std only), for `bench/memory.sh`: how much memory a server holds per
//! idle keep-alive connection, and whether it gives it back once they close.
//!
//! Measures the server process `--pid` (`VmRSS` in `/proc/PID/status`):
//! 1. `baseline`: before any flood connection (the caller has already sent a warm-up request);
//! 2. opens `--connections` keep-alive connections (from `--parallel` threads), sends one request
//!    on each and reads its answer, then leaves them all open and idle;
//! 3. `peak`: once every connection is open and answered, after `--hold` seconds;
//! 4. closes them all, waits `--settle` seconds, `after`.
//!
//! Output: a human summary on stderr and one line on stdout:
//! `RESULT connections=N answered=N failed=N statuses=200:N,502:N baseline_kb=… peak_kb=…
//! after_kb=… per_conn_kb=… returned=…` where `per_conn_kb = (peak - baseline) / answered` and
//! `returned = (peak - after) / (peak - baseline)` (1 = all of it given back).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sluice_loadgen::read_response;

struct Args {
    addr: SocketAddr,
    target: String,
    host: String,
    pid: u32,
    connections: usize,
    parallel: usize,
    hold: f64,
    settle: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: sluice-flood --addr IP:PORT --pid PID [--target /path|http://host/path] [--host HOST] \
         [--connections 8000] [--parallel 16] [--hold 1] [--settle 5]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:80".parse().expect("valid default"),
        target: "/".into(),
        host: "localhost".into(),
        pid: 0,
        connections: 8000,
        parallel: 16,
        hold: 1.0,
        settle: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--addr" => a.addr = val().parse().unwrap_or_else(|_| usage()),
            "--target" => a.target = val(),
            "--host" => a.host = val(),
            "--pid" => a.pid = val().parse().unwrap_or_else(|_| usage()),
            "--connections" => a.connections = val().parse().unwrap_or_else(|_| usage()),
            "--parallel" => a.parallel = val().parse().unwrap_or_else(|_| usage()),
            "--hold" => a.hold = val().parse().unwrap_or_else(|_| usage()),
            "--settle" => a.settle = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.pid == 0 || a.connections == 0 || a.parallel == 0 {
        usage();
    }
    a
}

/// `VmRSS` of `pid` in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        eprintln!("sluice-flood: /proc/{pid}/status: {e} (did the server exit?)");
        std::process::exit(1)
    });
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| {
            eprintln!("sluice-flood: no VmRSS line in /proc/{pid}/status");
            std::process::exit(1)
        })
}

/// Opens one connection, sends the request and reads its answer; the connection stays open.
fn open_one(a: &Args, request: &[u8]) -> std::io::Result<(TcpStream, u16)> {
    let mut s = TcpStream::connect_timeout(&a.addr, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(request)?;
    // A small reader: the answer is short, and thousands of these are alive at once.
    let mut r = BufReader::with_capacity(4096, s.try_clone()?);
    let (status, _) = read_response(&mut r)?;
    Ok((s, status))
}

fn main() {
    let a = parse_args();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-flood\r\nAccept: */*\r\n\r\n",
        a.target, a.host
    )
    .into_bytes();

    let baseline = rss_kb(a.pid);
    let start = Instant::now();
    let per_thread: Vec<(Vec<TcpStream>, BTreeMap<u16, usize>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.parallel)
            .map(|t| {
                let (a, request) = (&a, &request);
                s.spawn(move || {
                    let mut open = Vec::new();
                    let mut statuses = BTreeMap::new();
                    let mut failed = 0;
                    let mut i = t;
                    while i < a.connections {
                        match open_one(a, request) {
                            Ok((stream, status)) => {
                                open.push(stream);
                                *statuses.entry(status).or_insert(0) += 1;
                            }
                            Err(e) => {
                                if failed == 0 {
                                    eprintln!("sluice-flood: connection {i}: {e}");
                                }
                                failed += 1;
                            }
                        }
                        i += a.parallel;
                    }
                    (open, statuses, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("flood thread"))
            .collect()
    });
    let opened_in = start.elapsed().as_secs_f64();
    let mut streams = Vec::with_capacity(a.connections);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failed = 0;
    for (open, st, f) in per_thread {
        streams.extend(open);
        for (k, v) in st {
            *statuses.entry(k).or_insert(0) += v;
        }
        failed += f;
    }
    let answered = streams.len();

    std::thread::sleep(Duration::from_secs_f64(a.hold));
    let peak = rss_kb(a.pid);
    drop(streams);
    std::thread::sleep(Duration::from_secs_f64(a.settle));
    let after = rss_kb(a.pid);

    let grown = peak.saturating_sub(baseline);
    let per_conn = if answered > 0 {
        grown as f64 / answered as f64
    } else {
        f64::NAN
    };
    let returned = if grown > 0 {
        peak.saturating_sub(after) as f64 / grown as f64
    } else {
        f64::NAN
    };
    let statuses_text: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let statuses_text = if statuses_text.is_empty() {
        "-".to_string()
    } else {
        statuses_text.join(",")
    };
    eprintln!(
        "{answered} of {} connections answered in {opened_in:.1}s ({failed} failed; statuses {statuses_text}); \
         RSS baseline {baseline} KiB, peak {peak} KiB ({per_conn:.2} KiB per connection), \
         {} s after closing {after} KiB ({:.0}% of the growth given back)",
        a.connections,
        a.settle,
        returned * 100.0
    );
    println!(
        "RESULT connections={} answered={answered} failed={failed} statuses={statuses_text} baseline_kb={baseline} \
         peak_kb={peak} after_kb={after} per_conn_kb={per_conn:.3} returned={returned:.3}",
        a.connections
    );
    if answered == 0 {
        std::process::exit(1);
    }
}
