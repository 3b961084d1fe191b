//! flamegrid's one wall clock: milliseconds since the Unix epoch, the unit of every timestamp
//! in a sample (`ThreadSample::time_ms`), a run (`start_ms`, `end_ms`), Flink's JSON
//! (`start-time`, `endTimestamp`, `last-heartbeat`, ...) and the registry's records. One
//! function, so that the sampler, the agent and the coordinator read the same clock the same
//! way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
