//! Time spent in each kernel, for `cargo xtask bench --phases`: off unless [`enable`]d, then one
//! clock read per kernel call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Starts recording (process-wide).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// The calls and seconds recorded per kernel since the last call, by name; clears them.
pub fn take() -> Vec<(&'static str, u64, f64)> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *totals)
        .into_iter()
        .map(|(name, (calls, secs))| (name, calls, secs))
        .collect()
}

/// Runs `f`, adding its time to `name` when recording.
pub(crate) fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let out = f();
    let secs = t.elapsed().as_secs_f64();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let e = totals.entry(name).or_default();
    e.0 += 1;
    e.1 += secs;
    out
}
