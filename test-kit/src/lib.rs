//! The fixtures Weir's test suites and models share, so each is written
//! once: the queue a test works in, a job of a kind, and the process ids a
//! model numbers by index.
//!
//! A suite whose fixture differs in a way it relies on (another queue name,
//! a payload it reads back) keeps its own.
//!
//! The core's own unit tests (`core/src`) cannot use this crate: through it
//! they would see a second copy of `weir-core`'s types. Its integration
//! tests (`core/tests`) can.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use weir_core::{Kind, NewJob, Payload, ProcessId, QueueName};

/// The queue `default`, where a test's jobs go unless it needs another.
pub fn queue() -> QueueName {
    QueueName::new("default").expect("a valid queue name")
}

/// The kind `name`; panics if `name` is not a valid kind.
pub fn kind(name: &str) -> Kind {
    Kind::new(name).expect("a valid kind")
}

/// A job of kind `kind` in [`queue`], with the payload `{}` and every
/// other field at [`NewJob::new`]'s default.
pub fn job(kind: &str) -> NewJob {
    NewJob::new(queue(), self::kind(kind), Payload(b"{}".to_vec()))
}

/// The process id of the model's process number `index` (from 0): ids
/// start at 1.
pub fn pid(index: usize) -> ProcessId {
    ProcessId(index as u64 + 1)
}

/// The index of the process [`pid`] gave `id`.
pub fn index(id: ProcessId) -> usize {
    usize::try_from(id.0 - 1).expect("a process id from pid()")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids_start_at_one_and_map_back_to_their_index() {
        assert_eq!(pid(0), ProcessId(1));
        for i in [0, 1, 7] {
            assert_eq!(index(pid(i)), i);
        }
    }

    #[test]
    fn a_job_is_in_the_default_queue_with_an_empty_object() {
        let job = job("k");
        assert_eq!(job.queue.as_str(), "default");
        assert_eq!(job.kind.as_str(), "k");
        assert_eq!(job.payload, Payload(b"{}".to_vec()));
    }
}
