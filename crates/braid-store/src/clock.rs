//! Wall-clock time as the store records it: milliseconds since the Unix
//! epoch (run creation, leases, cache expiry). Durations of runs and agents
//! come from the monotonic clock, in the core, never from here.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
