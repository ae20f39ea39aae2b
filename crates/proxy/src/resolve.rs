//! Name resolution for upstream endpoints, kept off the request path.
//!
//! Envoy never resolves a STRICT_DNS/LOGICAL_DNS cluster's names while a request waits: the
//! cluster resolves in the background (every `dns_refresh_rate`, or the record TTL with
//! `respect_dns_ttl`, which Istio sets) and requests use the hosts it last found. A failed refresh
//! keeps those hosts. [`Resolver`] does the same, one entry per name:
//!
//! - a lookup of a name with an answer returns it at once, without awaiting anything (stale or
//!   not: a refresh that failed keeps the last good answer, as Envoy keeps a cluster's hosts);
//! - a name seen for the first time starts one resolution, shared by every caller asking for it
//!   meanwhile; each caller waits at most the deadline it passes (its cluster's connect timeout);
//! - every entry is refreshed by its own small task before its TTL ends (the TTL clamped to
//!   [`CacheConfig::min_ttl`]..[`CacheConfig::max_ttl`]); failures are retried with a backoff;
//! - a name that does not resolve (NXDOMAIN, no A/AAAA, or an error with no earlier answer) is
//!   remembered briefly, so requests for it fail at once instead of each waiting again;
//! - names nobody asked for in [`CacheConfig::idle_timeout`] are dropped, and the cache holds at
//!   most [`CacheConfig::max_names`] names (the least recently used goes first), as Envoy's DNS
//!   cache (`host_ttl`, `max_hosts`).
//!
//! Where the answers come from is behind [`NameLookup`]: [`SystemLookup`] reads `/etc/hosts`
//! first and asks DNS (`/etc/resolv.conf`) only for names not in it, as glibc's
//! `hosts: files dns`.

mod system;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use system::SystemLookup;

/// The addresses a name resolved to, IPv4 first (Istio's V4-preferred lookup family); never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(Arc<[IpAddr]>);

impl Addresses {
    /// Orders `ips` IPv4 first (keeping each family's order) without duplicates; `None` if empty.
    fn new(mut ips: Vec<IpAddr>) -> Option<Addresses> {
        let mut seen = std::collections::HashSet::with_capacity(ips.len());
        ips.retain(|ip| seen.insert(*ip));
        ips.sort_by_key(IpAddr::is_ipv6);
        (!ips.is_empty()).then(|| Addresses(ips.into()))
    }

    fn one(ip: IpAddr) -> Addresses {
        Addresses(Arc::from([ip]))
    }

    /// The `n`-th address (wrapping), so that retries move on to the next one.
    pub fn socket(&self, n: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.0[n % self.0.len()], port)
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.0
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/etc/hosts`.
    Hosts,
    /// A name server from `/etc/resolv.conf`.
    Dns,
    /// The C library (`getaddrinfo`), when the system DNS configuration could not be read.
    System,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Hosts => "hosts",
            Source::Dns => "dns",
            Source::System => "getaddrinfo",
        }
    }
}

/// What one resolution found.
#[derive(Debug, Clone)]
pub struct Answer {
    pub ips: Vec<IpAddr>,
    /// How long the records may be used (`None`: the source gives no TTL).
    pub ttl: Option<Duration>,
    pub source: Source,
}

/// Why one resolution found no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupFailure {
    /// The name servers answered: the name has no address (NXDOMAIN, or no A/AAAA records).
    /// `negative_ttl` is how long that answer holds (the zone's SOA), when they said.
    #[error("the name has no address (NXDOMAIN or no A/AAAA records)")]
    NoRecords { negative_ttl: Option<Duration> },
    /// No name server answered in time.
    #[error("no name server answered in time")]
    Timeout,
    /// Any other failure (SERVFAIL, REFUSED, an unreachable server, a malformed name).
    #[error("{0}")]
    Failed(String),
}

/// A source of answers for [`Resolver`]: [`SystemLookup`] in production, fakes in tests.
pub trait NameLookup: Send + Sync + 'static {
    /// Resolves `name` (a host name, never an IP literal) once, without caching.
    fn lookup(&self, name: Arc<str>) -> BoxFuture<'static, Result<Answer, LookupFailure>>;
}

/// Why a request could not get an address for a name (Envoy's `DF` response flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS resolution of {name} failed: {reason}")]
pub struct ResolveError {
    pub name: Arc<str>,
    pub reason: ResolveFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveFailure {
    /// The first resolution of the name had not finished within the caller's deadline (its
    /// cluster's connect timeout); it goes on in the background.
    #[error("no answer within {0:?} (the cluster's connect timeout); still resolving")]
    Deadline(Duration),
    /// The latest resolution failed and there is no earlier answer to fall back on.
    #[error(transparent)]
    Lookup(LookupFailure),
    /// Not a host name at all (empty, too long, or characters DNS names cannot have).
    #[error("not a valid host name")]
    InvalidName,
}

impl ResolveError {
    /// `%RESPONSE_CODE_DETAILS%`, in the form Envoy's dynamic forward proxy uses
    /// (`dns_resolution_failure{<reason>}`).
    pub fn details(&self) -> &'static str {
        match &self.reason {
            ResolveFailure::Deadline(_) | ResolveFailure::Lookup(LookupFailure::Timeout) => {
                "dns_resolution_failure{resolve_timeout}"
            }
            ResolveFailure::Lookup(LookupFailure::NoRecords { .. }) => {
                "dns_resolution_failure{no_records}"
            }
            ResolveFailure::Lookup(LookupFailure::Failed(_)) => "dns_resolution_failure{failed}",
            ResolveFailure::InvalidName => "dns_resolution_failure{invalid_name}",
        }
    }
}

/// The cache's timings and bounds. The defaults follow Envoy and Istio (each field says which
/// setting); tests shrink them.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// An answer is used at least this long before it is refreshed, whatever its TTL: Envoy's
    /// `dns_min_refresh_rate` (5 s), which bounds `respect_dns_ttl` from below.
    pub min_ttl: Duration,
    /// And at most this long: a name that moves is picked up within this time even when its
    /// records claim a day.
    pub max_ttl: Duration,
    /// TTL of answers whose source gives none (`/etc/hosts`, `getaddrinfo`): Envoy's default
    /// `dns_refresh_rate` (5 s). An edited hosts file is therefore seen within this time.
    pub default_ttl: Duration,
    /// A refresh starts when this share of the TTL has passed, so that the next answer is there
    /// before the current one expires.
    pub refresh_ratio: f64,
    /// How long "no such name" is believed when the zone gives no SOA minimum.
    pub negative_ttl: Duration,
    /// Bounds on how long "no such name" is believed.
    pub negative_min_ttl: Duration,
    pub negative_max_ttl: Duration,
    /// A failed resolution is retried after `failure_backoff.0`, doubling up to `.1`: Envoy's
    /// `dns_failure_refresh_rate` (`base_interval`, `max_interval`).
    pub failure_backoff: (Duration, Duration),
    /// One resolution's whole time budget (every query, search domain and retry): Envoy's
    /// `dns_query_timeout` (5 s).
    pub resolve_timeout: Duration,
    /// Names unused this long are dropped: Envoy's DNS cache `host_ttl` (5 min).
    pub idle_timeout: Duration,
    /// At most this many names: Envoy's DNS cache `max_hosts` (1024).
    pub max_names: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            default_ttl: Duration::from_secs(5),
            refresh_ratio: 0.9,
            negative_ttl: Duration::from_secs(5),
            negative_min_ttl: Duration::from_secs(1),
            negative_max_ttl: Duration::from_secs(30),
            failure_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
            resolve_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_names: 1024,
        }
    }
}

/// `d` within `[lo, hi]`; never panics on inverted bounds (then `hi` wins).
fn bound(d: Duration, lo: Duration, hi: Duration) -> Duration {
    d.max(lo).min(hi)
}

/// A caching resolver (see the module docs); clones share one cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    lookup: Arc<dyn NameLookup>,
    config: CacheConfig,
    /// Read without locks on the request path; replaced (copy on write, under `writer`) only
    /// when a name is added or dropped.
    entries: ArcSwap<HashMap<Arc<str>, Arc<Entry>>>,
    writer: Mutex<()>,
    /// Origin of `Entry::last_used`.
    epoch: Instant,
}

struct Entry {
    /// Lower case, without a trailing dot.
    name: Arc<str>,
    state: ArcSwap<State>,
    /// Wakes the callers waiting for the first answer.
    changed: Notify,
    /// Milliseconds since `Inner::epoch` of the latest lookup.
    last_used: AtomicU64,
}

#[derive(Debug)]
enum State {
    /// The first resolution is under way: nothing to answer yet.
    Pending,
    Ready(Ready),
}

#[derive(Debug, Clone)]
struct Ready {
    /// The last good answer; kept (stale) while refreshes fail, dropped when the name servers
    /// say the name has no address any more (as Envoy's STRICT_DNS clusters do).
    addrs: Option<Addresses>,
    source: Option<Source>,
    /// When `addrs` were resolved and when their (bounded) TTL ends; past it they are stale.
    resolved_at: Instant,
    fresh_until: Instant,
    /// Why the latest resolution failed (`None`: it succeeded).
    failure: Option<LookupFailure>,
    /// When the entry's task resolves the name again.
    refresh_at: Instant,
}

impl Entry {
    /// The entry's answer, or `None` while the first resolution is under way.
    fn answer(&self) -> Option<Result<Addresses, LookupFailure>> {
        match &**self.state.load() {
            State::Pending => None,
            State::Ready(Ready { addrs: Some(a), .. }) => Some(Ok(a.clone())),
            State::Ready(r) => Some(Err(r
                .failure
                .clone()
                .unwrap_or(LookupFailure::NoRecords { negative_ttl: None }))),
        }
    }
}

impl Resolver {
    /// `/etc/hosts`, then the name servers of `/etc/resolv.conf` (or `getaddrinfo` when that
    /// cannot be read), with the default cache timings.
    pub fn from_system() -> Resolver {
        Resolver::new(
            Arc::new(SystemLookup::from_system()),
            CacheConfig::default(),
        )
    }

    pub fn new(lookup: Arc<dyn NameLookup>, config: CacheConfig) -> Resolver {
        Resolver {
            inner: Arc::new(Inner {
                lookup,
                config,
                entries: ArcSwap::from_pointee(HashMap::new()),
                writer: Mutex::new(()),
                epoch: Instant::now(),
            }),
        }
    }

    /// The addresses of `name` (an IP literal, bracketed or not, is returned as is). Answers at
    /// once when the name has an answer, good or bad; otherwise waits for its first resolution,
    /// at most `deadline`.
    pub async fn resolve(&self, name: &str, deadline: Duration) -> Result<Addresses, ResolveError> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Addresses::one(ip));
        }
        let fail = |reason| ResolveError {
            name: Arc::from(name),
            reason,
        };
        let key = normalize(name).ok_or_else(|| fail(ResolveFailure::InvalidName))?;
        let now = self.inner.millis();
        {
            let map = self.inner.entries.load();
            if let Some(entry) = map.get(&*key) {
                entry.touch(now);
                if let Some(answer) = entry.answer() {
                    return answer.map_err(|f| fail(ResolveFailure::Lookup(f)));
                }
            }
        }
        let entry = self.inner.entry(&key, now);
        let wait = async {
            loop {
                // Registered before the state is read, so an answer stored in between still
                // wakes this caller.
                let notified = entry.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(answer) = entry.answer() {
                    return answer;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(answer) => answer.map_err(|f| fail(ResolveFailure::Lookup(f))),
            Err(_) => Err(fail(ResolveFailure::Deadline(deadline))),
        }
    }

    /// Starts resolving `name` now if it is not cached yet, so that the first request for it
    /// does not wait (Envoy resolves a DNS cluster's names when the cluster is added). Call it
    /// from within the async runtime.
    pub fn prefetch(&self, name: &str) {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return;
        }
        if let Some(key) = normalize(name) {
            self.inner.entry(&key, self.inner.millis());
        }
    }

    /// The cache as the admin API shows it: one object per name, sorted by name.
    pub fn dump(&self) -> serde_json::Value {
        let now = Instant::now();
        let now_ms = self.inner.millis();
        let map = self.inner.entries.load();
        let mut names: Vec<_> = map.values().collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        let secs = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
        let rows: Vec<serde_json::Value> = names
            .into_iter()
            .map(|e| {
                let idle = Duration::from_millis(
                    now_ms.saturating_sub(e.last_used.load(Ordering::Relaxed)),
                );
                let mut row = serde_json::json!({
                    "name": &*e.name,
                    "idle_s": secs(idle),
                });
                match &**e.state.load() {
                    State::Pending => row["state"] = "resolving".into(),
                    State::Ready(r) => {
                        let state = match (&r.addrs, &r.failure) {
                            (None, _) => "negative",
                            (Some(_), _) if now >= r.fresh_until => "stale",
                            (Some(_), _) => "fresh",
                        };
                        row["state"] = state.into();
                        if let Some(a) = &r.addrs {
                            row["addresses"] = a
                                .ips()
                                .iter()
                                .map(|ip| ip.to_string())
                                .collect::<Vec<_>>()
                                .into();
                            row["age_s"] =
                                secs(now.saturating_duration_since(r.resolved_at)).into();
                        }
                        if let Some(s) = r.source {
                            row["source"] = s.as_str().into();
                        }
                        row["valid_for_s"] =
                            secs(r.fresh_until.saturating_duration_since(now)).into();
                        row["next_refresh_s"] =
                            secs(r.refresh_at.saturating_duration_since(now)).into();
                        if let Some(f) = &r.failure {
                            row["last_error"] = f.to_string().into();
                        }
                    }
                }
                row
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

/// The cache key of a host name: lower case, without a trailing dot. `None` for what no DNS
/// name can be, so that garbage (a client's Host header, for instance) never takes a slot.
fn normalize(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name
            .split('.')
            .any(|label| label.is_empty() || label.len() > 63);
    if !valid {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    })
}

impl Entry {
    /// Records a use; written at most once per 100 ms so that busy names do not keep one cache
    /// line bouncing between cores.
    fn touch(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= 100 {
            self.last_used.store(now_ms, Ordering::Relaxed);
        }
    }
}

impl Inner {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn idle(&self, entry: &Entry) -> Duration {
        Duration::from_millis(
            self.millis()
                .saturating_sub(entry.last_used.load(Ordering::Relaxed)),
        )
    }

    /// The entry for `key`, created (and its task started) if there is none.
    fn entry(self: &Arc<Self>, key: &str, now_ms: u64) -> Arc<Entry> {
        if let Some(e) = self.entries.load().get(key) {
            return e.clone();
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.entries.load_full();
        if let Some(e) = current.get(key) {
            return e.clone();
        }
        let mut map = HashMap::clone(&current);
        if map.len() >= self.config.max_names.max(1) {
            self.evict(&mut map);
        }
        let entry = Arc::new(Entry {
            name: Arc::from(key),
            state: ArcSwap::from_pointee(State::Pending),
            changed: Notify::new(),
            last_used: AtomicU64::new(now_ms),
        });
        map.insert(entry.name.clone(), entry.clone());
        self.entries.store(Arc::new(map));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(maintain(Arc::downgrade(self), Arc::downgrade(&entry)));
            }
            // Only `prefetch` can get here outside a runtime: the first `resolve` of the name
            // will find it pending and wait in vain, so take it out again.
            Err(_) => {
                tracing::warn!("DNS cache: no async runtime to resolve {key} on");
                map_remove(&self.entries, &entry);
            }
        }
        entry
    }

    /// Makes room for one more name: the least recently used one goes, preferring one with an
    /// answer over one whose first resolution still has callers waiting. Its task notices that
    /// the entry is gone and stops.
    fn evict(&self, map: &mut HashMap<Arc<str>, Arc<Entry>>) {
        let victim = map
            .values()
            .min_by_key(|e| {
                let pending = matches!(**e.state.load(), State::Pending);
                (pending, e.last_used.load(Ordering::Relaxed))
            })
            .map(|e| e.name.clone());
        if let Some(name) = victim {
            tracing::debug!("DNS cache full ({} names): dropping {name}", map.len());
            map.remove(&name);
        }
    }

    /// Drops `entry` if it is still the one cached under its name.
    fn remove(&self, entry: &Arc<Entry>) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        map_remove(&self.entries, entry);
    }
}

/// Removes `entry` from `entries` if it is still the one cached under its name; the caller
/// holds `Inner::writer`.
fn map_remove(entries: &ArcSwap<HashMap<Arc<str>, Arc<Entry>>>, entry: &Arc<Entry>) {
    let current = entries.load_full();
    if current
        .get(&entry.name)
        .is_some_and(|e| Arc::ptr_eq(e, entry))
    {
        let mut map = HashMap::clone(&current);
        map.remove(&entry.name);
        entries.store(Arc::new(map));
    }
}

/// One name's task: resolves it, stores the answer, sleeps until the next refresh; stops when
/// the name has been idle too long, was evicted, or the cache is gone. It holds only weak
/// references while it sleeps, so it never keeps either alive.
async fn maintain(inner: Weak<Inner>, entry: Weak<Entry>) {
    let mut failures = 0u32;
    loop {
        let (lookup, name, budget) = {
            let (Some(inner), Some(entry)) = (inner.upgrade(), entry.upgrade()) else {
                return;
            };
            let pending = matches!(**entry.state.load(), State::Pending);
            if !pending && inner.idle(&entry) >= inner.config.idle_timeout {
                tracing::debug!(
                    "DNS cache: dropping {}, unused for {:?}",
                    entry.name,
                    inner.idle(&entry)
                );
                inner.remove(&entry);
                return;
            }
            (
                inner.lookup.clone(),
                entry.name.clone(),
                inner.config.resolve_timeout,
            )
        };
        let result = tokio::time::timeout(budget, lookup.lookup(name.clone()))
            .await
            .unwrap_or(Err(LookupFailure::Timeout));
        let (Some(inner), Some(entry)) = (inner.upgrade(), entry.upgrade()) else {
            return;
        };
        let previous = entry.state.load_full();
        let (next, wait) = next_state(
            &previous,
            result,
            Instant::now(),
            &inner.config,
            &mut failures,
        );
        log_change(&name, &previous, &next);
        entry.state.store(Arc::new(State::Ready(next)));
        entry.changed.notify_waiters();
        drop((inner, entry));
        tokio::time::sleep(wait).await;
    }
}

/// The entry after a resolution, and how long until the next one. `failures` counts the
/// consecutive failures behind the backoff.
fn next_state(
    previous: &State,
    result: Result<Answer, LookupFailure>,
    now: Instant,
    cfg: &CacheConfig,
    failures: &mut u32,
) -> (Ready, Duration) {
    let result = result.and_then(|a| match Addresses::new(a.ips) {
        Some(addrs) => Ok((addrs, a.ttl, a.source)),
        None => Err(LookupFailure::NoRecords {
            negative_ttl: a.ttl,
        }),
    });
    match result {
        Ok((addrs, ttl, source)) => {
            *failures = 0;
            let ttl = bound(ttl.unwrap_or(cfg.default_ttl), cfg.min_ttl, cfg.max_ttl);
            let refresh = ttl.mul_f64(cfg.refresh_ratio.clamp(0.1, 1.0));
            let ready = Ready {
                addrs: Some(addrs),
                source: Some(source),
                resolved_at: now,
                fresh_until: now + ttl,
                failure: None,
                refresh_at: now + refresh,
            };
            (ready, refresh)
        }
        Err(f @ LookupFailure::NoRecords { negative_ttl }) => {
            // An answer, not a failure: the name servers say the name has no address.
            *failures = 0;
            let ttl = bound(
                negative_ttl.unwrap_or(cfg.negative_ttl),
                cfg.negative_min_ttl,
                cfg.negative_max_ttl,
            );
            let ready = Ready {
                addrs: None,
                source: None,
                resolved_at: now,
                fresh_until: now + ttl,
                failure: Some(f),
                refresh_at: now + ttl,
            };
            (ready, ttl)
        }
        Err(f) => {
            *failures = failures.saturating_add(1);
            let (base, max) = cfg.failure_backoff;
            let wait = base
                .saturating_mul(1u32 << (*failures - 1).min(16))
                .min(max.max(base));
            let ready = match previous {
                // Serve the last good answer (stale) and try again later.
                State::Ready(r) if r.addrs.is_some() => Ready {
                    failure: Some(f),
                    refresh_at: now + wait,
                    ..r.clone()
                },
                _ => Ready {
                    addrs: None,
                    source: None,
                    resolved_at: now,
                    fresh_until: now + wait,
                    failure: Some(f),
                    refresh_at: now + wait,
                },
            };
            (ready, wait)
        }
    }
}

/// Logs what changed for an operator: a name that stopped resolving (once, not at every retry),
/// one that recovered, and new addresses.
fn log_change(name: &str, previous: &State, next: &Ready) {
    let before = match previous {
        State::Ready(r) => Some(r),
        State::Pending => None,
    };
    let failed_before = before.is_some_and(|r| r.failure.is_some());
    match (&next.failure, &next.addrs) {
        (Some(f), Some(addrs)) if !failed_before => tracing::warn!(
            "DNS refresh of {name} failed ({f}); still using its last answer {:?}",
            addrs.ips()
        ),
        (Some(f), None) if !failed_before => {
            tracing::info!("DNS resolution of {name} failed: {f}")
        }
        (None, Some(addrs)) => {
            if failed_before {
                tracing::info!("DNS resolution of {name} works again: {:?}", addrs.ips());
            } else if before.is_none_or(|r| r.addrs.as_ref() != Some(addrs)) {
                tracing::debug!("{name} resolves to {:?}", addrs.ips());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
