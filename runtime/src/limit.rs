//! Cluster-wide concurrency limits, on the core's N-slot semaphores.
//!
//! A limit is a named semaphore of N slots shared by every process. Before
//! a limited job's handler runs, its slot is taken as a *lease*
//! (`Command::SlotTry` with a TTL), renewed on a timer while the handler
//! runs, and released once the handler has ended — however it ended. A
//! process that dies mid-job frees its slots when their leases lapse, so a
//! crash never shrinks a limit for longer than the lease TTL.
//!
//! Every decision here is the core's [`weir_core::Dispatcher`]: which
//! limits a job runs under (its queue's, from
//! [`crate::PoolConfig::queue_limit`], and its own, from
//! [`crate::JobArgs::concurrency`], which the pool reads when the
//! dispatcher asks), the scan of the slots (the core's `Acquisition`,
//! with no waiting: a slot whose try errors is skipped), what a miss does
//! (the job is handed back without using an attempt, for a jittered pause
//! drawn from [`LimitConfig`]'s range: the waiting is done in storage
//! rather than by a task holding a worker), when a slot is renewed, and
//! that a handler whose slot cannot be renewed before its lease would
//! lapse is stopped (and its job handed back once it ended). The pool only
//! executes those commands.
//!
//! Cost: a start costs up to N slot tries while the limit is full, and a
//! miss costs the claim and the snooze writes. Limits are for scarce
//! external resources, not for a hot path.
//!
//! What a lease cannot do: a process paused for longer than the lease TTL
//! (a stop-the-world pause, `SIGSTOP`, a VM migration) resumes believing it
//! still holds its slot, while storage has already given the slot to
//! someone else; it learns otherwise only at its next renewal (and then
//! its handler is stopped). The chaos suite shows this overlap on demand
//! (`cargo test -p weir-tests --test chaos -- --ignored`). Where that
//! matters, the protected resource must check a fencing token: the slot's
//! [`weir_core::SlotGrant::epoch`] only grows, so a resource that
//! remembers the highest epoch it has seen per slot can refuse a paused
//! holder's late write, exactly as job epochs fence late workers.

pub use weir_core::{InvalidLimit, Limit, LimitConfig};
