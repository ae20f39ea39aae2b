//! Where a sidecar's memory for its config goes: the live heap held by the decoded resources
//! (with their field-position tables), the compiled snapshot and the per-cluster runtimes, for
//! the config in a directory. `bench/config.sh` runs it on its generated config; counted by a
//! global allocator that tracks live bytes, so the numbers are exact and allocator-independent.
//!
//! `cargo run --release --example config_memory -p sluice-proxy -- DIR`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes currently allocated.
struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LiveBytes = LiveBytes;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: config_memory DIR");
        std::process::exit(2);
    };
    let start = live_mib();
    let loaded = sluice_api::load_paths(&[PathBuf::from(dir)]);
    let resources = loaded.resources;
    let decoded = live_mib();
    let positions: usize = resources
        .iter()
        .map(|r| r.origin.positions.heap_bytes())
        .sum();
    let identity = sluice_model::ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    let snapshot = sluice_model::compile(&resources, &identity, 1);
    let compiled = live_mib();
    let balancers = sluice_proxy::balancer::Balancers::default();
    balancers.sync(&snapshot);
    let runtimes = live_mib();
    let n = resources.len().max(1) as f64;
    println!(
        "live heap for {} resources: decoded {:.1} MiB ({:.0} B each, of which field positions \
         ~{:.1} MiB), snapshot {:.1} MiB, cluster runtimes {:.1} MiB, total {:.1} MiB",
        resources.len(),
        decoded - start,
        (decoded - start) * 1024.0 * 1024.0 / n,
        positions as f64 / (1024.0 * 1024.0),
        compiled - decoded,
        runtimes - compiled,
        runtimes - start,
    );
    drop((resources, snapshot, balancers));
}
