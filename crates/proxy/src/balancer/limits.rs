//! Circuit breakers: a cluster's `connectionPool` limits (`maxConnections`,
//! `http1MaxPendingRequests`, `http2MaxRequests`, `maxRetries`) and the permits that hold a
//! request, a retry or a connection against them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use sluice_model::registry::EndpointAddress;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ClusterRuntime, EndpointState};

/// Which circuit breaker tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `http2MaxRequests`: too many requests in flight.
    Requests,
    /// `http1MaxPendingRequests`: too many requests waiting for a connection.
    Pending,
    /// `maxConnections` (TCP proxying): too many open connections.
    Connections,
    /// `maxRetries`: too many retries in flight.
    Retries,
}

pub(super) fn semaphore(max: u32) -> Option<Arc<Semaphore>> {
    (max != u32::MAX).then(|| Arc::new(Semaphore::new(max as usize)))
}

impl ClusterRuntime {
    /// Starts a request against the circuit breakers: `maxRequests` (requests in flight) and
    /// `http1MaxPendingRequests`. With HTTP/1.1 each busy connection carries one request, so once
    /// `maxConnections` requests are in flight, further requests wait for a connection (pending).
    pub fn admit_request(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        let limits = &self.state.load().cluster.limits;
        let active = self.stats.rq_active.fetch_add(1, Ordering::AcqRel);
        let permit = RequestPermit {
            runtime: self.clone(),
        };
        if active >= u64::from(limits.max_requests) {
            self.stats.rq_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Requests);
        }
        let max_cx = u64::from(limits.max_connections);
        if limits.max_connections != u32::MAX && active >= max_cx {
            let pending = active - max_cx;
            if pending >= u64::from(limits.max_pending_requests) {
                self.stats
                    .rq_pending_overflow
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Overflow::Pending);
            }
        }
        Ok(permit)
    }

    /// Starts a retry, unless `maxRetries` retries are already in flight.
    pub fn try_retry(self: &Arc<Self>) -> Result<RetryPermit, Overflow> {
        let max = u64::from(self.state.load().cluster.limits.max_retries);
        let active = self.stats.retries_active.fetch_add(1, Ordering::AcqRel);
        let permit = RetryPermit {
            runtime: self.clone(),
        };
        if active >= max {
            self.stats.retry_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Retries);
        }
        Ok(permit)
    }

    /// Opens a connection slot for `addr`, waiting while `maxConnections` are open (HTTP: the
    /// request is pending meanwhile).
    pub async fn acquire_connection(self: &Arc<Self>, addr: SocketAddr) -> ConnectionGuard {
        let sem = self.state.load().connections.clone();
        let permit = match sem {
            Some(s) => s.acquire_owned().await.ok(),
            None => None,
        };
        self.connection_guard(addr, permit)
    }

    /// Whether `maxConnections` connections are open: a new one would wait.
    pub fn connection_slots_full(&self) -> bool {
        self.state
            .load()
            .connections
            .as_ref()
            .is_some_and(|s| s.available_permits() == 0)
    }

    /// Opens a connection slot for `addr`, or fails at once when `maxConnections` are open
    /// (TCP proxying refuses the connection).
    pub fn try_acquire_connection(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<ConnectionGuard, Overflow> {
        let sem = self.state.load().connections.clone();
        let permit = match sem {
            Some(s) => match s.try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.stats.cx_overflow.fetch_add(1, Ordering::Relaxed);
                    return Err(Overflow::Connections);
                }
            },
            None => None,
        };
        Ok(self.connection_guard(addr, permit))
    }

    fn connection_guard(
        self: &Arc<Self>,
        addr: SocketAddr,
        permit: Option<OwnedSemaphorePermit>,
    ) -> ConnectionGuard {
        let endpoint = self
            .state
            .load()
            .endpoints
            .iter()
            .find(|e| e.address == EndpointAddress::Ip(addr.ip()) && e.port == addr.port())
            .cloned();
        self.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &endpoint {
            e.cx_active.fetch_add(1, Ordering::Relaxed);
        }
        ConnectionGuard {
            runtime: Arc::downgrade(self),
            endpoint,
            _permit: permit,
        }
    }
}

/// A request in flight to a cluster (`rq_active`); released when dropped.
pub struct RequestPermit {
    runtime: Arc<ClusterRuntime>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.runtime.stats.rq_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight to a cluster; released when dropped.
pub struct RetryPermit {
    runtime: Arc<ClusterRuntime>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.runtime
            .stats
            .retries_active
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open upstream connection (`cx_active`, a `maxConnections` permit); released when dropped.
pub struct ConnectionGuard {
    /// Weak: idle pooled connections must not keep a removed cluster's runtime (which owns
    /// their pool) alive.
    runtime: Weak<ClusterRuntime>,
    endpoint: Option<Arc<EndpointState>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.upgrade() {
            rt.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(e) = &self.endpoint {
            e.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
