//! A fixed-rate HTTP/1.1 load generator (std only), for `bench/run.sh`.
//!
//! `--connections` keep-alive connections, one thread each, together send `--rate` requests per
//! second for `--duration` seconds. Request `k` of the whole run is *scheduled* at
//! `start + k / rate`; a connection that is still waiting for an earlier answer sends late, and
//! the latency is measured from the scheduled time, not from the send (so a stall counts against
//! every request it delayed: no coordinated omission, as in wrk2). The first `--warmup` seconds are
//! sent but not recorded.
//!
//! Output: a human summary on stderr and one machine-readable line on stdout:
//! `RESULT sent=N ok=N errors=N rate=R p50_ms=… p90_ms=… p99_ms=… p999_ms=… max_ms=…`

use std::io::{BufReader, Write};

use sluice_loadgen::read_response;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Args {
    addr: SocketAddr,
    target: String,
    host: String,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: sluice-loadgen --addr IP:PORT [--target /path|http://host/path] [--host HOST] \
         [--rate 1000] [--duration 10] [--warmup 2] [--connections 16]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:80".parse().expect("valid default"),
        target: "/".into(),
        host: "localhost".into(),
        rate: 1000.0,
        duration: 10.0,
        warmup: 2.0,
        connections: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--addr" => a.addr = val().parse().unwrap_or_else(|_| usage()),
            "--target" => a.target = val(),
            "--host" => a.host = val(),
            "--rate" => a.rate = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = val().parse().unwrap_or_else(|_| usage()),
            "--warmup" => a.warmup = val().parse().unwrap_or_else(|_| usage()),
            "--connections" => a.connections = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.rate <= 0.0 || a.duration <= 0.0 || a.connections == 0 {
        usage();
    }
    a
}

struct ConnResult {
    sent: u64,
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

fn run_connection(a: &Args, idx: usize, start: Instant, request: &[u8]) -> ConnResult {
    let total = (a.rate * (a.warmup + a.duration)) as u64;
    let warm = (a.rate * a.warmup) as u64;
    let mut res = ConnResult { sent: 0, ok: 0, errors: 0, latencies_us: Vec::new() };
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut k = idx as u64;
    while k < total {
        let scheduled = start + Duration::from_secs_f64(k as f64 / a.rate);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let outcome = (|| -> std::io::Result<(u16, bool)> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&a.addr, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let r = BufReader::with_capacity(16 * 1024, s.try_clone()?);
                conn = Some((s, r));
            }
            let (s, r) = conn.as_mut().expect("connected above");
            s.write_all(request)?;
            read_response(r)
        })();
        let done = Instant::now();
        res.sent += 1;
        match outcome {
            Ok((status, keep_alive)) => {
                if (200..400).contains(&status) {
                    res.ok += 1;
                } else {
                    res.errors += 1;
                }
                if !keep_alive {
                    conn = None;
                }
            }
            Err(_) => {
                res.errors += 1;
                conn = None;
            }
        }
        if k >= warm {
            let lat = done.saturating_duration_since(scheduled).as_micros().min(u128::from(u32::MAX));
            res.latencies_us.push(lat as u32);
        }
        k += a.connections as u64;
    }
    res
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let a = parse_args();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-loadgen\r\nAccept: */*\r\n\r\n",
        a.target, a.host
    )
    .into_bytes();
    let start = Instant::now() + Duration::from_millis(50);
    let results: Vec<ConnResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.connections)
            .map(|i| {
                let (a, request) = (&a, &request);
                s.spawn(move || run_connection(a, i, start, request))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("load thread")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (mut sent, mut ok, mut errors) = (0u64, 0u64, 0u64);
    let mut lat: Vec<u32> = Vec::new();
    for r in results {
        sent += r.sent;
        ok += r.ok;
        errors += r.errors;
        lat.extend(r.latencies_us);
    }
    lat.sort_unstable();
    let achieved = sent as f64 / elapsed;
    eprintln!(
        "{sent} requests in {elapsed:.1}s ({achieved:.0}/s, target {}/s), {errors} errors; latency from schedule: \
         p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        a.rate,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        pct(&lat, 100.0)
    );
    println!(
        "RESULT sent={sent} ok={ok} errors={errors} rate={achieved:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} \
         p999_ms={:.3} max_ms={:.3}",
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        pct(&lat, 100.0)
    );
    if ok == 0 {
        std::process::exit(1);
    }
}
