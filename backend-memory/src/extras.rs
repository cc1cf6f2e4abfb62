//! What the runtime's `Backend` trait keeps beside the world (feature
//! `runtime`): the presence map and the wake-up channel. Its own module so
//! that `backend.rs` (the world behind a lock) and `runtime.rs` (the trait
//! over it) depend on it, not on each other.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::broadcast;
use weir::{Wakeup, WorkerInfo};
use weir_core::ProcessId;

/// Wake-ups buffered per subscriber before it counts as lagging (and is
/// told [`Wakeup::Missed`]).
const WAKEUP_BUFFER: usize = 1024;

pub(crate) struct Extras {
    pub(crate) workers: Mutex<BTreeMap<ProcessId, WorkerInfo>>,
    pub(crate) wakeups: broadcast::Sender<Wakeup>,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            workers: Mutex::new(BTreeMap::new()),
            wakeups: broadcast::channel(WAKEUP_BUFFER).0,
        }
    }
}
