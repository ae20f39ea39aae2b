//! A count of the elementary steps that config processing takes on the current thread: values
//! deserialized, line-table entries visited, host patterns and label sets compared. Tests use it
//! to prove that the work grows in proportion to a file's size (a 3,000-item file takes about
//! twice the steps of a 1,500-item one, not four times) without timing anything.
//!
//! Counting is a thread-local addition; nothing on a request's path counts.

use std::cell::Cell;

thread_local! {
    static STEPS: Cell<u64> = const { Cell::new(0) };
}

/// Records `n` steps.
#[inline]
pub fn count(n: u64) {
    STEPS.with(|s| s.set(s.get().saturating_add(n)));
}

/// Runs `f` and returns its result with the steps it took on this thread.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = STEPS.with(Cell::get);
    let out = f();
    (out, STEPS.with(Cell::get).saturating_sub(before))
}
