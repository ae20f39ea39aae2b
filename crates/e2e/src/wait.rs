//! Polling instead of blind sleeps.

use std::time::{Duration, Instant};

/// Calls `f` every 100 ms until it returns `Ok`, and returns that value. Panics after `timeout`
/// with `what` and the last error, so the failure says what was expected and what was seen.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!("{what}: still not the case after {timeout:?} ({attempts} attempts); last attempt: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a config change may take to be live: the contract says within 1 s; this adds margin.
pub const CONFIG_SETTLE: Duration = Duration::from_millis(1500);

/// Waits out [`CONFIG_SETTLE`]. Only for changes whose effect cannot be polled cheaply (a new
/// timeout shows only on a slow request); everything else should use [`eventually`].
pub fn settle() {
    std::thread::sleep(CONFIG_SETTLE);
}
