//! The system's answers: `/etc/hosts` first, then the name servers of `/etc/resolv.conf`.
//!
//! Choices, and why:
//! - **Hosts file first, and alone when it knows the name** (glibc's `hosts: files dns`): a name
//!   listed there is answered from it with no DNS query at all. hickory's own hosts support is
//!   off: it answers only the record types the file has, so a name with an IPv4 line in it still
//!   sent an AAAA query to the name server, and it reads the file once at start. Here the file
//!   is re-read when it changes (checked at each resolution, in the background).
//! - **A first, AAAA only when there is no A** (Envoy's `V4_PREFERRED`; Istio asks for `V4_ONLY`
//!   on IPv4 pods, which this matches whenever a name has an A record). An A query that times out
//!   or fails is not followed by an AAAA query to the same dead server.
//! - **Short queries**: each query waits at most [`MAX_QUERY_TIMEOUT`] (`options timeout:` in
//!   resolv.conf can only lower it) and is sent `options attempts:` times in all (default 2,
//!   as glibc counts; hickory's own setting counts retries, one more); the cache bounds a
//!   whole resolution by its `resolve_timeout` anyway, and no request ever waits for more than
//!   its connect timeout.
//! - **No second cache**: hickory's response cache is off; [`super::Resolver`] caches, with its
//!   own TTL bounds and serve-stale.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

use super::{Answer, LookupFailure, NameLookup, Source};

/// The longest one DNS query may wait for its answer.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/etc/hosts`, then DNS as `/etc/resolv.conf` says (or `getaddrinfo` when it cannot be read).
pub struct SystemLookup {
    hosts: Arc<HostsFile>,
    dns: Option<TokioResolver>,
}

impl SystemLookup {
    pub fn from_system() -> SystemLookup {
        let dns = TokioResolver::builder_tokio().and_then(|mut builder| {
            configure(builder.options_mut());
            builder.build()
        });
        let dns = match dns {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "/etc/resolv.conf is unusable ({e}); resolving names with getaddrinfo"
                );
                None
            }
        };
        SystemLookup::with_parts(HostsFile::new(PathBuf::from("/etc/hosts")), dns)
    }

    pub(super) fn with_parts(hosts: HostsFile, dns: Option<TokioResolver>) -> SystemLookup {
        SystemLookup {
            hosts: Arc::new(hosts),
            dns,
        }
    }
}

/// The resolver options this module's header explains.
fn configure(o: &mut ResolverOpts) {
    o.use_hosts_file = ResolveHosts::Never;
    o.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    o.cache_size = 0;
    o.timeout = o.timeout.min(MAX_QUERY_TIMEOUT);
    // resolv.conf's `attempts` counts every try (glibc); hickory's counts the retries.
    o.attempts = o.attempts.saturating_sub(1);
}

/// A resolver configured as [`SystemLookup::from_system`] does, asking only the UDP name
/// server at `server`, with `timeout` per query.
#[cfg(test)]
pub(super) fn dns_for_tests(server: std::net::SocketAddr, timeout: Duration) -> TokioResolver {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let mut ns = NameServerConfig::udp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    let o = builder.options_mut();
    o.timeout = timeout;
    o.attempts = 1;
    configure(o);
    builder
        .build()
        .unwrap_or_else(|e| panic!("resolver for {server}: {e}"))
}

impl NameLookup for SystemLookup {
    fn lookup(&self, name: Arc<str>) -> BoxFuture<'static, Result<Answer, LookupFailure>> {
        let hosts = self.hosts.clone();
        let dns = self.dns.clone();
        async move {
            // Reading a small file: cheap, and only ever done by a name's background task.
            if let Some(ips) = hosts.lookup(&name) {
                return Ok(Answer {
                    ips,
                    ttl: None,
                    source: Source::Hosts,
                });
            }
            match dns {
                Some(dns) => dns_lookup(&dns, &name).await,
                None => getaddrinfo(&name).await,
            }
        }
        .boxed()
    }
}

/// A, then AAAA if the name has no A record.
async fn dns_lookup(dns: &TokioResolver, name: &str) -> Result<Answer, LookupFailure> {
    let mut negative_ttl = None;
    for record_type in [RecordType::A, RecordType::AAAA] {
        match dns.lookup(name, record_type).await {
            Ok(lookup) => {
                if let Some(answer) = answer_of(&lookup) {
                    return Ok(answer);
                }
            }
            Err(e) => match no_records_ttl(&e) {
                Some(ttl) => negative_ttl = ttl.or(negative_ttl),
                None => return Err(failure_of(&e)),
            },
        }
    }
    Err(LookupFailure::NoRecords { negative_ttl })
}

/// The addresses of a lookup (CNAMEs followed) and its TTL; `None` without any address.
fn answer_of(lookup: &Lookup) -> Option<Answer> {
    let ips: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Some(Answer {
        ips,
        ttl: Some(ttl),
        source: Source::Dns,
    })
}

/// `Some(negative TTL)` when the error is the name servers saying there is no such record.
fn no_records_ttl(e: &NetError) -> Option<Option<Duration>> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            Some(nr.negative_ttl.map(|s| Duration::from_secs(u64::from(s))))
        }
        _ => None,
    }
}

fn failure_of(e: &NetError) -> LookupFailure {
    match e {
        NetError::Timeout => LookupFailure::Timeout,
        NetError::Io(io) if io.kind() == io::ErrorKind::TimedOut => LookupFailure::Timeout,
        other => LookupFailure::Failed(other.to_string()),
    }
}

async fn getaddrinfo(name: &str) -> Result<Answer, LookupFailure> {
    let ips: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| LookupFailure::Failed(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    Ok(Answer {
        ips,
        ttl: None,
        source: Source::System,
    })
}

/// A hosts file, parsed again only when it changes.
pub(super) struct HostsFile {
    path: PathBuf,
    parsed: Mutex<Option<(FileStamp, Arc<Hosts>)>>,
}

/// What tells that a file changed without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl HostsFile {
    pub(super) fn new(path: PathBuf) -> HostsFile {
        HostsFile {
            path,
            parsed: Mutex::new(None),
        }
    }

    /// Every address the file lists for `name` (any family), or `None` when it does not list
    /// the name (or cannot be read: then DNS decides, as glibc does).
    pub(super) fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        let hosts = self.current()?;
        let name = Name::from_str(name).ok()?;
        let ips: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| hosts.lookup_static_host(&Query::query(name.clone(), t)))
            .flat_map(|l| {
                l.answers()
                    .iter()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .collect();
        (!ips.is_empty()).then_some(ips)
    }

    fn current(&self) -> Option<Arc<Hosts>> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        };
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, hosts)) = parsed.as_ref() {
            if *s == stamp {
                return Some(hosts.clone());
            }
        }
        let mut hosts = Hosts::default();
        let read = std::fs::File::open(&self.path).and_then(|f| hosts.read_hosts_conf(f));
        if let Err(e) = read {
            tracing::warn!("cannot read {}: {e}", self.path.display());
            return None;
        }
        let hosts = Arc::new(hosts);
        *parsed = Some((stamp, hosts.clone()));
        Some(hosts)
    }
}
