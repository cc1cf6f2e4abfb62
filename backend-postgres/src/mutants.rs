//! Deliberately broken SQL, for showing that the checkers catch it (feature
//! `mutants`, for tests only).
//!
//! Each [`SqlMutation`] rewrites one fragment of the statements the backend
//! sends, the way a plausible mistake would: a lock left out, a `SKIP
//! LOCKED` forgotten, a guard dropped from a `WHERE`. The rewrite happens
//! where every statement is built ([`PgBackend::sql`](crate::PgBackend)),
//! so the mutated backend is the real one with exactly one fragment
//! changed; a test in this module fails if a fragment no longer occurs in
//! the statements, so a mutation cannot silently stop mutating anything.

/// One deliberate mistake in the backend's SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlMutation {
    /// The worker's receipt batches (heartbeat, complete, fail, snooze,
    /// wait-external) read their rows without `FOR UPDATE`: the winners
    /// are picked from a snapshot, so a rescue sweep that committed in
    /// between is overwritten and both the worker's answer and the
    /// rescue's are accepted for the same attempt.
    ReceiptsWithoutRowLock,
    /// Claims lock their jobs with `FOR UPDATE` but without `SKIP LOCKED`:
    /// a claim that meets a job another claim is taking waits for it, then
    /// drops it (READ COMMITTED re-checks the row after its `LIMIT`), and
    /// returns fewer jobs than were available.
    ClaimWithoutSkipLocked,
    /// The fast completion path drops `j.epoch = i.epoch` from its `WHERE`:
    /// a stale receipt completes the job's newer attempt.
    CompleteWithoutEpoch,
    /// A heartbeat writes every running job its batch names, not only the
    /// winners: a stale receipt is refused in the answer (the answer is
    /// built from the locked rows) but still moves the newer attempt's
    /// `heartbeat_at`, so a rescue sees it fresher than it is. The next
    /// real heartbeat or the attempt's end overwrites it, which is why a
    /// state comparison every 40 steps missed it.
    HeartbeatWritesStale,
    /// The receipt batches pick their winners without comparing epochs
    /// (`l.epoch = i.epoch` dropped from the winner join): a stale
    /// heartbeat, failure, snooze or wait writes the newer attempt's row,
    /// while its answer (built from the locked row) still says stale.
    ReceiptsWithoutEpoch,
    /// The receipt batches pick their winners without checking the state
    /// (`l.state = 'running'` dropped): a worker's write with the current
    /// epoch lands on a job that waits for its callback, or is finished.
    /// The SQL twin of the core's `ReceiptIgnoresState`.
    ReceiptsWithoutState,
    /// A failure retries while `attempt > max_attempts` decides
    /// exhaustion (`>=` became `>`): one attempt more than allowed. The SQL
    /// twin of the core's `RetryPastMaxAttempts`.
    FailPastMaxAttempts,
    /// A snooze forgets to refund the attempt (`attempt = j.attempt - 1`
    /// became `attempt = j.attempt`). The twin of `SnoozeConsumesAttempt`.
    SnoozeWithoutRefund,
    /// Claims do not consult the pause gate (`AND (SELECT open FROM
    /// clock)` dropped): a paused queue's jobs are claimed.
    ClaimIgnoresPause,
    /// Claims keep the job's epoch (`epoch = j.epoch + 1` became
    /// `epoch = j.epoch`): two attempts share one epoch. The twin of
    /// `ClaimWithoutEpochBump`.
    ClaimWithoutEpochBump,
    /// A failure of a job with a backoff of its own is retried on the
    /// configured policy instead (`WHEN l.backoff_base_ms IS NOT NULL`
    /// became `WHEN false`): the SQL forgets `Job::backoff_or`.
    FailIgnoresOwnBackoff,
    /// A failure appends its error without dropping the oldest once a job
    /// keeps `ErrorRecord::KEPT` (`j.errors - 0` became `j.errors`): the
    /// history grows without bound. The SQL twin of `Job::record_error`'s
    /// bound.
    FailKeepsEveryError,
}

impl SqlMutation {
    /// Every mutation.
    pub const ALL: [SqlMutation; 12] = [
        SqlMutation::ReceiptsWithoutRowLock,
        SqlMutation::ClaimWithoutSkipLocked,
        SqlMutation::CompleteWithoutEpoch,
        SqlMutation::HeartbeatWritesStale,
        SqlMutation::ReceiptsWithoutEpoch,
        SqlMutation::ReceiptsWithoutState,
        SqlMutation::FailPastMaxAttempts,
        SqlMutation::SnoozeWithoutRefund,
        SqlMutation::ClaimIgnoresPause,
        SqlMutation::ClaimWithoutEpochBump,
        SqlMutation::FailIgnoresOwnBackoff,
        SqlMutation::FailKeepsEveryError,
    ];

    /// The mutations the differential test must tell apart from the
    /// world (`backend-postgres/tests/differential.rs`): one serial
    /// client sees them. Of the others, most need concurrency, and the
    /// concurrent histories catch them (`tests/tests/histories.rs`);
    /// `FailKeepsEveryError` needs more failures of one job than the
    /// differential's jobs may have, and the conformance suite's retry
    /// scenario catches it (`tests/tests/conformance.rs`).
    pub const SERIAL: [SqlMutation; 8] = [
        SqlMutation::HeartbeatWritesStale,
        SqlMutation::ReceiptsWithoutEpoch,
        SqlMutation::ReceiptsWithoutState,
        SqlMutation::FailPastMaxAttempts,
        SqlMutation::SnoozeWithoutRefund,
        SqlMutation::ClaimIgnoresPause,
        SqlMutation::ClaimWithoutEpochBump,
        SqlMutation::FailIgnoresOwnBackoff,
    ];

    /// The fragment this mutation rewrites, and what it becomes.
    fn rewrite(self) -> (&'static str, &'static str) {
        match self {
            SqlMutation::ReceiptsWithoutRowLock => (
                "WHERE j.id IN (SELECT id FROM input)\n    ORDER BY j.id\n    FOR UPDATE\n",
                "WHERE j.id IN (SELECT id FROM input)\n    ORDER BY j.id\n",
            ),
            SqlMutation::ClaimWithoutSkipLocked => {
                ("FOR UPDATE OF j SKIP LOCKED", "FOR UPDATE OF j")
            }
            SqlMutation::CompleteWithoutEpoch => (
                "WHERE j.id = i.id AND j.epoch = i.epoch AND j.state = 'running'\nRETURNING j.id, j.epoch",
                "WHERE j.id = i.id AND j.state = 'running'\nRETURNING j.id, j.epoch",
            ),
            SqlMutation::HeartbeatWritesStale => (
                "SET heartbeat_at = greatest(j.heartbeat_at, c.now)\n            FROM winner w, clock c WHERE j.id = w.id\n",
                "SET heartbeat_at = greatest(j.heartbeat_at, c.now)\n            FROM input w, clock c WHERE j.id = w.id AND j.state = 'running'\n",
            ),
            SqlMutation::ReceiptsWithoutEpoch => (
                "JOIN locked l ON l.id = i.id AND l.epoch = i.epoch AND l.state = 'running'",
                "JOIN locked l ON l.id = i.id AND l.state = 'running'",
            ),
            SqlMutation::ReceiptsWithoutState => (
                "JOIN locked l ON l.id = i.id AND l.epoch = i.epoch AND l.state = 'running'",
                "JOIN locked l ON l.id = i.id AND l.epoch = i.epoch",
            ),
            SqlMutation::FailPastMaxAttempts => (
                "WHEN l.attempt >= l.max_attempts THEN 'attempts_exhausted'",
                "WHEN l.attempt > l.max_attempts THEN 'attempts_exhausted'",
            ),
            SqlMutation::SnoozeWithoutRefund => {
                ("SET attempt = j.attempt - 1,", "SET attempt = j.attempt,")
            }
            SqlMutation::ClaimIgnoresPause => ("      AND (SELECT open FROM clock)\n", ""),
            SqlMutation::ClaimWithoutEpochBump => (
                "SET state = 'running', epoch = j.epoch + 1,",
                "SET state = 'running', epoch = j.epoch,",
            ),
            SqlMutation::FailIgnoresOwnBackoff => (
                "WHEN l.backoff_base_ms IS NOT NULL THEN",
                "WHEN false THEN",
            ),
            SqlMutation::FailKeepsEveryError => (
                "THEN j.errors - 0 ELSE j.errors END",
                "THEN j.errors ELSE j.errors END",
            ),
        }
    }

    /// `sql` with this mutation's fragment rewritten (unchanged when the
    /// statement does not hold it).
    pub(crate) fn apply(self, sql: String) -> String {
        let (from, to) = self.rewrite();
        if sql.contains(from) {
            sql.replace(from, to)
        } else {
            sql
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SqlMutation;

    /// Every mutation's fragment occurs in the statements it names, so the
    /// mutated backend really differs from the real one.
    #[test]
    fn every_mutation_rewrites_a_statement() {
        let statements = [
            crate::receipts::mutated_statements(),
            crate::claim::mutated_statements(),
        ]
        .concat();
        for mutation in SqlMutation::ALL {
            let (from, _) = mutation.rewrite();
            let hits = statements.iter().filter(|s| s.contains(from)).count();
            assert!(
                hits > 0,
                "{mutation:?}: its fragment {from:?} is in no statement any more"
            );
        }
    }
}
