//! What the clock tests (`tests/clocks.rs`) and their worker process
//! (`src/bin/clock_worker.rs`) share: the job, and the timings.

use serde::{Deserialize, Serialize};
use weir::core::{Backoff, Millis, WorldConfig};
use weir::JobArgs;

/// A job that sleeps `ms` and completes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// How long.
    pub ms: u64,
}

impl JobArgs for Sleep {
    const KIND: &'static str = "clock.sleep";
    const MAX_ATTEMPTS: u32 = 3;
}

/// How often the worker heartbeats its running jobs.
pub const HEARTBEAT_INTERVAL: Millis = Millis(300);

/// A running job whose heartbeat is this old is rescued: five missed
/// heartbeats.
pub const HEARTBEAT_STALE_AFTER: Millis = Millis(1_500);

/// The decision settings of the test's storage.
pub fn world_config() -> WorldConfig {
    WorldConfig {
        heartbeat_stale_after: HEARTBEAT_STALE_AFTER,
        backoff: Backoff::constant(Millis(10)),
        ..WorldConfig::default()
    }
}
