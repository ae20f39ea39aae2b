//! Name resolution for upstream endpoints, through the system's DNS configuration
//! (`/etc/resolv.conf`, `/etc/hosts`), cached by record TTL.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;

/// Why a name did not resolve (Envoy's `DF` flag when it matters to a request).
#[derive(Debug, thiserror::Error)]
#[error("DNS resolution of {name} failed: {reason}")]
pub struct ResolveError {
    pub name: String,
    pub reason: String,
}

/// A caching DNS resolver built from the system configuration.
#[derive(Clone)]
pub struct Resolver {
    dns: Option<TokioResolver>,
}

impl Resolver {
    /// Reads the system resolver configuration; without one, names are resolved by `getaddrinfo`.
    pub fn from_system() -> Resolver {
        let dns = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "system DNS configuration unusable ({e}); falling back to getaddrinfo"
                );
                None
            }
        };
        Resolver { dns }
    }

    /// The addresses of `name` (an IP literal is returned as is), paired with `port`.
    pub async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fail = |reason: String| ResolveError {
            name: name.to_string(),
            reason,
        };
        let addrs: Vec<SocketAddr> = match &self.dns {
            Some(dns) => dns
                .lookup_ip(name)
                .await
                .map_err(|e| fail(e.to_string()))?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            None => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| fail(e.to_string()))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(fail("no addresses".into()));
        }
        Ok(addrs)
    }
}
