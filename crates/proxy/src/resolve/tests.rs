//! The cache against a scripted [`NameLookup`], in real (short) time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::system::HostsFile;
use super::*;

/// Answers every lookup with its current `reply`, after `delay`, and counts the lookups.
struct Fake {
    calls: AtomicUsize,
    reply: Mutex<Result<Answer, LookupFailure>>,
    delay: Mutex<Duration>,
}

impl Fake {
    fn new(reply: Result<Answer, LookupFailure>) -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicUsize::new(0),
            reply: Mutex::new(reply),
            delay: Mutex::new(Duration::ZERO),
        })
    }

    fn set(&self, reply: Result<Answer, LookupFailure>) {
        *self.reply.lock().unwrap() = reply;
    }

    fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl NameLookup for Fake {
    fn lookup(&self, _name: Arc<str>) -> BoxFuture<'static, Result<Answer, LookupFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = self.reply.lock().unwrap().clone();
        let delay = *self.delay.lock().unwrap();
        async move {
            tokio::time::sleep(delay).await;
            reply
        }
        .boxed()
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn ok(ips: &[IpAddr], ttl_ms: u64) -> Result<Answer, LookupFailure> {
    Ok(Answer {
        ips: ips.to_vec(),
        ttl: Some(Duration::from_millis(ttl_ms)),
        source: Source::Dns,
    })
}

/// Timings in tens of milliseconds so the tests run in real time.
fn fast() -> CacheConfig {
    CacheConfig {
        min_ttl: Duration::from_millis(100),
        max_ttl: Duration::from_millis(400),
        default_ttl: Duration::from_millis(200),
        refresh_ratio: 0.5,
        negative_ttl: Duration::from_millis(150),
        negative_min_ttl: Duration::from_millis(100),
        negative_max_ttl: Duration::from_millis(300),
        failure_backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        resolve_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_names: 100,
    }
}

const LONG: Duration = Duration::from_secs(5);

fn resolver(fake: &Arc<Fake>, cfg: CacheConfig) -> Resolver {
    Resolver::new(fake.clone(), cfg)
}

fn entry_state(r: &Resolver, name: &str) -> Option<String> {
    r.dump()
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_cached_name_is_answered_without_another_lookup() {
    let fake = Fake::new(ok(&[v4(1)], 60_000));
    let r = resolver(
        &fake,
        CacheConfig {
            max_ttl: Duration::from_secs(60),
            ..fast()
        },
    );
    let first = r.resolve("svc.example", LONG).await.unwrap();
    assert_eq!(first.ips(), [v4(1)]);
    fake.set_delay(LONG);
    for _ in 0..100 {
        let started = Instant::now();
        let again = r.resolve("svc.example", LONG).await.unwrap();
        assert_eq!(again, first);
        // Far below the fake's delay: nothing was awaited.
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn concurrent_callers_share_one_resolution() {
    let fake = Fake::new(ok(&[v4(2)], 60_000));
    fake.set_delay(Duration::from_millis(100));
    let r = resolver(&fake, fast());
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve("herd.example", LONG).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap().ips(), [v4(2)]);
    }
    assert_eq!(fake.calls(), 1, "one lookup for 50 concurrent callers");
}

#[tokio::test]
async fn a_caller_waits_at_most_its_deadline_and_the_answer_is_kept() {
    let fake = Fake::new(ok(&[v4(3)], 60_000));
    fake.set_delay(Duration::from_millis(400));
    let r = resolver(&fake, fast());
    let started = Instant::now();
    let err = r
        .resolve("slow.example", Duration::from_millis(50))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        err.reason,
        ResolveFailure::Deadline(Duration::from_millis(50))
    );
    assert_eq!(err.details(), "dns_resolution_failure{resolve_timeout}");
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_millis(300),
        "waited {waited:?} for a 50 ms deadline"
    );
    // The resolution went on in the background: once it is done, callers get it at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let got = r
        .resolve("slow.example", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.ips(), [v4(3)]);
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(fake.calls(), 1);
}

#[test]
fn ttls_are_bounded() {
    let cfg = fast();
    let now = Instant::now();
    let ttl_of = |answer: Result<Answer, LookupFailure>| {
        let (ready, wait) = next_state(&State::Pending, answer, now, &cfg, &mut 0);
        (ready.fresh_until - now, wait)
    };
    // A zero TTL is raised to the minimum, a day is cut to the maximum, none gets the default.
    assert_eq!(ttl_of(ok(&[v4(1)], 0)).0, cfg.min_ttl);
    assert_eq!(ttl_of(ok(&[v4(1)], 86_400_000)).0, cfg.max_ttl);
    assert_eq!(ttl_of(ok(&[v4(1)], 250)).0, Duration::from_millis(250));
    let none = Ok(Answer {
        ips: vec![v4(1)],
        ttl: None,
        source: Source::Hosts,
    });
    assert_eq!(ttl_of(none).0, cfg.default_ttl);
    // The refresh comes before the TTL ends.
    let (ttl, refresh) = ttl_of(ok(&[v4(1)], 250));
    assert_eq!(refresh, ttl.mul_f64(cfg.refresh_ratio));
    assert!(refresh < ttl);
    // Negative answers: the SOA minimum, bounded; the default without one.
    let neg = |t: Option<u64>| {
        ttl_of(Err(LookupFailure::NoRecords {
            negative_ttl: t.map(Duration::from_millis),
        }))
        .0
    };
    assert_eq!(neg(None), cfg.negative_ttl);
    assert_eq!(neg(Some(0)), cfg.negative_min_ttl);
    assert_eq!(neg(Some(3_600_000)), cfg.negative_max_ttl);
}

#[test]
fn failures_back_off_exponentially_up_to_the_maximum() {
    let cfg = fast();
    let now = Instant::now();
    let mut failures = 0;
    let waits: Vec<u128> = (0..5)
        .map(|_| {
            next_state(
                &State::Pending,
                Err(LookupFailure::Timeout),
                now,
                &cfg,
                &mut failures,
            )
            .1
            .as_millis()
        })
        .collect();
    assert_eq!(waits, [50, 100, 200, 200, 200]);
    // A success resets the backoff.
    next_state(&State::Pending, ok(&[v4(1)], 100), now, &cfg, &mut failures);
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn entries_are_refreshed_in_the_background_before_they_expire() {
    let fake = Fake::new(ok(&[v4(4)], 200));
    let r = resolver(&fake, fast());
    assert_eq!(
        r.resolve("moving.example", LONG).await.unwrap().ips(),
        [v4(4)]
    );
    fake.set(ok(&[v4(5)], 200));
    // Refresh at half the 200 ms TTL: well within 600 ms the new address is served, and no
    // caller ever had to wait for it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        fake.calls() >= 3,
        "refreshed without requests: {}",
        fake.calls()
    );
    let started = Instant::now();
    assert_eq!(
        r.resolve("moving.example", LONG).await.unwrap().ips(),
        [v4(5)]
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(entry_state(&r, "moving.example").as_deref(), Some("fresh"));
}

#[tokio::test]
async fn a_failed_refresh_serves_the_last_answer_and_retries() {
    let fake = Fake::new(ok(&[v4(6)], 100));
    let r = resolver(&fake, fast());
    assert_eq!(
        r.resolve("flaky.example", LONG).await.unwrap().ips(),
        [v4(6)]
    );
    fake.set(Err(LookupFailure::Timeout));
    // Well past the TTL (100 ms): the name servers are gone, the last answer stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = fake.calls();
    assert!(calls >= 3, "refresh retried: {calls} lookups");
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(
            r.resolve("flaky.example", LONG).await.unwrap().ips(),
            [v4(6)]
        );
        assert!(started.elapsed() < Duration::from_millis(50));
    }
    assert_eq!(entry_state(&r, "flaky.example").as_deref(), Some("stale"));
    let dump = r.dump();
    assert_eq!(
        dump[0]["last_error"], "no name server answered in time",
        "{dump}"
    );
    // The name servers come back: the next refresh (backoff ≤ 200 ms) replaces the answer.
    fake.set(ok(&[v4(7)], 100));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        r.resolve("flaky.example", LONG).await.unwrap().ips(),
        [v4(7)]
    );
    assert_eq!(entry_state(&r, "flaky.example").as_deref(), Some("fresh"));
}

#[tokio::test]
async fn negative_answers_are_cached_briefly() {
    let fake = Fake::new(Err(LookupFailure::NoRecords {
        negative_ttl: Some(Duration::from_millis(200)),
    }));
    let r = resolver(&fake, fast());
    let err = r.resolve("nowhere.example", LONG).await.unwrap_err();
    assert_eq!(err.details(), "dns_resolution_failure{no_records}");
    // Within the negative TTL every caller fails at once, without a new lookup.
    for _ in 0..20 {
        let started = Instant::now();
        assert!(r.resolve("nowhere.example", LONG).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(50));
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(
        entry_state(&r, "nowhere.example").as_deref(),
        Some("negative")
    );
    // Then the name is asked again, and now it exists.
    fake.set(ok(&[v4(8)], 1000));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        r.resolve("nowhere.example", LONG).await.unwrap().ips(),
        [v4(8)]
    );
    assert!(fake.calls() >= 2);
}

#[tokio::test]
async fn an_error_without_an_earlier_answer_is_cached_until_the_retry() {
    let fake = Fake::new(Err(LookupFailure::Failed("SERVFAIL".into())));
    let r = resolver(&fake, fast());
    let err = r.resolve("broken.example", LONG).await.unwrap_err();
    assert_eq!(
        err.reason,
        ResolveFailure::Lookup(LookupFailure::Failed("SERVFAIL".into()))
    );
    assert_eq!(err.details(), "dns_resolution_failure{failed}");
    let started = Instant::now();
    assert!(r.resolve("broken.example", LONG).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(40));
    assert_eq!(fake.calls(), 1, "no new lookup before the backoff (50 ms)");
    fake.set(ok(&[v4(9)], 1000));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        r.resolve("broken.example", LONG).await.unwrap().ips(),
        [v4(9)]
    );
}

#[tokio::test]
async fn no_such_name_after_an_answer_drops_the_addresses() {
    // As Envoy's STRICT_DNS clusters: an authoritative "no address" empties the host set;
    // only failures keep the last answer.
    let fake = Fake::new(ok(&[v4(10)], 100));
    let r = resolver(&fake, fast());
    assert!(r.resolve("gone.example", LONG).await.is_ok());
    fake.set(Err(LookupFailure::NoRecords { negative_ttl: None }));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(r.resolve("gone.example", LONG).await.is_err());
}

#[tokio::test]
async fn unused_names_are_dropped() {
    let fake = Fake::new(ok(&[v4(11)], 100));
    let r = resolver(
        &fake,
        CacheConfig {
            idle_timeout: Duration::from_millis(150),
            ..fast()
        },
    );
    assert!(r.resolve("once.example", LONG).await.is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(entry_state(&r, "once.example"), None, "{}", r.dump());
    let calls = fake.calls();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls(), calls, "a dropped name is no longer refreshed");
    // Asked again, it is resolved again.
    assert!(r.resolve("once.example", LONG).await.is_ok());
    assert_eq!(fake.calls(), calls + 1);
}

#[tokio::test]
async fn the_cache_holds_at_most_max_names_dropping_the_least_recently_used() {
    let fake = Fake::new(ok(&[v4(12)], 60_000));
    let r = resolver(
        &fake,
        CacheConfig {
            max_names: 3,
            ..fast()
        },
    );
    for name in ["a.example", "b.example", "c.example"] {
        r.resolve(name, LONG).await.unwrap();
        // `last_used` has a 100 ms granularity.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    r.resolve("a.example", LONG).await.unwrap();
    r.resolve("d.example", LONG).await.unwrap();
    let names: Vec<String> = r
        .dump()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a.example", "c.example", "d.example"]);
}

#[tokio::test]
async fn literals_names_and_case() {
    let fake = Fake::new(ok(&[v4(13)], 60_000));
    let r = resolver(&fake, fast());
    let ip = r.resolve("[2001:db8::1]", LONG).await.unwrap();
    assert_eq!(ip.ips(), ["2001:db8::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        r.resolve("192.0.2.7", LONG).await.unwrap().socket(0, 80),
        "192.0.2.7:80".parse().unwrap()
    );
    for bad in ["", "a..b", "has space.example", "x/y", &"a".repeat(64)] {
        let err = r.resolve(bad, LONG).await.unwrap_err();
        assert_eq!(err.reason, ResolveFailure::InvalidName, "{bad:?}");
    }
    assert_eq!(fake.calls(), 0, "no lookup for literals or invalid names");
    // One entry whatever the case or a trailing dot.
    r.resolve("Svc.Example.", LONG).await.unwrap();
    r.resolve("svc.example", LONG).await.unwrap();
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn prefetch_resolves_before_the_first_request() {
    let fake = Fake::new(ok(&[v4(14)], 60_000));
    fake.set_delay(Duration::from_millis(50));
    let r = resolver(&fake, fast());
    r.prefetch("early.example");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    assert!(r.resolve("early.example", LONG).await.is_ok());
    assert!(started.elapsed() < Duration::from_millis(40));
    assert_eq!(fake.calls(), 1);
}

#[test]
fn addresses_put_ipv4_first_without_duplicates() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let a = Addresses::new(vec![v6, v4(1), v4(2), v4(1)]).unwrap();
    assert_eq!(a.ips(), [v4(1), v4(2), v6]);
    assert_eq!(a.socket(4, 80), SocketAddr::new(v4(2), 80));
    assert!(Addresses::new(Vec::new()).is_none());
}

#[test]
fn an_answer_without_addresses_is_a_negative_answer() {
    let cfg = fast();
    let (ready, _) = next_state(&State::Pending, ok(&[], 100), Instant::now(), &cfg, &mut 0);
    assert!(ready.addrs.is_none());
    assert!(matches!(
        ready.failure,
        Some(LookupFailure::NoRecords { .. })
    ));
}

#[test]
fn the_hosts_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    std::fs::write(
        &path,
        "127.0.0.1 localhost\n10.1.2.3 api.example api\n2001:db8::5 api.example\n",
    )
    .unwrap();
    let hosts = HostsFile::new(path.clone());
    let v6: IpAddr = "2001:db8::5".parse().unwrap();
    let got = hosts.lookup("API.example").unwrap();
    assert_eq!(got, [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), v6]);
    assert_eq!(hosts.lookup("api").unwrap().len(), 1, "aliases count");
    assert_eq!(hosts.lookup("other.example"), None);
    // Rewritten: the new content is read.
    std::fs::write(&path, "127.0.0.1 localhost\n10.9.9.9 new.example\n").unwrap();
    assert_eq!(hosts.lookup("api.example"), None);
    assert_eq!(
        hosts.lookup("new.example").unwrap(),
        [IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))]
    );
    // No file: DNS decides.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(hosts.lookup("new.example"), None);
}

#[tokio::test]
async fn the_system_lookup_answers_hosts_names_without_any_dns_query() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    std::fs::write(&path, "10.4.4.4 pinned.example\n").unwrap();
    // A name server on loopback that never answers, and tells whether it was asked.
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let dns = system::dns_for_tests(server.local_addr().unwrap(), Duration::from_millis(200));
    let lookup = SystemLookup::with_parts(HostsFile::new(path), Some(dns));
    // The record types asked for, from the queries' question sections.
    let asked = |server: &std::net::UdpSocket| {
        let mut buf = [0u8; 512];
        let mut types = Vec::new();
        while let Ok((n, _)) = server.recv_from(&mut buf) {
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += usize::from(buf[i]) + 1;
            }
            let qtype = buf
                .get(i + 1..i + 3)
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
            types.push(match qtype {
                Some(1) => "A".to_string(),
                Some(28) => "AAAA".to_string(),
                other => format!("{other:?}"),
            });
        }
        types
    };

    let started = Instant::now();
    let answer = lookup.lookup(Arc::from("pinned.example")).await.unwrap();
    assert_eq!(answer.ips, [IpAddr::V4(Ipv4Addr::new(10, 4, 4, 4))]);
    assert_eq!(answer.source, Source::Hosts);
    assert!(started.elapsed() < Duration::from_millis(150));
    assert_eq!(
        asked(&server),
        Vec::<String>::new(),
        "no A or AAAA query for a name in the hosts file"
    );

    // A name the file does not list goes to the name server: one A query, and no AAAA query
    // after the A query timed out.
    let started = Instant::now();
    let err = lookup
        .lookup(Arc::from("elsewhere.example"))
        .await
        .unwrap_err();
    assert_eq!(err, LookupFailure::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(asked(&server), ["A"]);
}
