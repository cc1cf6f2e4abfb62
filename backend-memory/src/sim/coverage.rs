//! What a run exercised: how often each fault fired, each rejection came
//! back, and each other path worth reaching was taken.
//!
//! A fault that never fires, or a rejection path no run reaches, is a
//! defect of the simulator: it would pass whatever the code on that path
//! does. The counts are printed with every summary, and a test over a seed
//! range asserts that everything in [`REQUIRED_REJECTIONS`],
//! [`REQUIRED_PATHS`] and [`FaultKind::ALL`] fired.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use weir_core::{Outcome, Reject};

use crate::fault::FaultKind;

/// Rejections every seed range must see.
pub const REQUIRED_REJECTIONS: &[&str] = &[
    "StaleEpoch",
    "NotRunning",
    "NotWaiting",
    "AlreadyFinished",
    "NotRetryable",
    "UnknownJob",
    "NoClaimerSlot",
    "ClaimerLeaseLost",
    "LeaderHeld",
    "NotLeader",
    "SlotBusy",
    "SlotNotHeld",
];

/// Other paths every seed range must take.
pub const REQUIRED_PATHS: &[&str] = &[
    // A late worker's result refused by epoch, the job unchanged.
    "late_result_fenced",
    // A running handler told to stop because its job was taken away.
    "handler_stopped_fenced",
    // A completion delivered twice: the second changes nothing.
    "duplicate_completion_refused",
    // A lost result retried by the dispatcher.
    "lost_result_retried",
    "claimer_taken_over",
    "rescued",
    "pruned",
    "duplicate_enqueue",
    "cancel_running",
    "admin_retry",
    "external_resumed",
    "leader_term_changed",
    "semaphore_acquired",
    "semaphore_wait_timed_out",
    "semaphore_try_error_skipped",
    "semaphore_lease_lapsed",
    // A session end freed a crashed holder's slot.
    "crashed_holder_slot_freed",
    // A release after the slot was freed some other way: a no-op.
    "slot_release_noop",
    "process_restarted",
    "graceful_shutdown",
    // Shutdown asked for while faults strike, completed (nothing the
    // process claimed still runs), and the process restarted.
    "shutdown_under_faults_completed",
    // A claim answered after shutdown began: its jobs handed back.
    "claimed_while_stopping",
    // A handler started holding a limit's slot.
    "limit_slot_taken",
    // A full limit handed its job back without an attempt.
    "limit_full_handed_back",
    // A handler stopped because its slot lapsed without a renewal.
    "limit_slot_lost",
    // A handler stopped at its deadline, on the process's own clock.
    "handler_timed_out",
    // A handler that did not end when told to was aborted.
    "handler_aborted",
    // A cancel notification that storage contradicted: ignored.
    "cancel_hint_refuted",
];

/// Counts of what one run, or a range of runs, exercised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Faults that fired.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Rejections returned, by `Reject` variant name (batch items each).
    pub rejections: BTreeMap<&'static str, u64>,
    /// Other paths taken.
    pub paths: BTreeMap<&'static str, u64>,
}

impl Coverage {
    pub(crate) fn fault(&mut self, kind: FaultKind) {
        *self.faults.entry(kind).or_default() += 1;
    }

    pub(crate) fn path(&mut self, name: &'static str) {
        self.paths_add(name, 1);
    }

    pub(crate) fn paths_add(&mut self, name: &'static str, n: u64) {
        if n > 0 {
            *self.paths.entry(name).or_default() += n;
        }
    }

    /// Counts every rejection in `outcome`, batch items included.
    pub(crate) fn outcome(&mut self, outcome: &Outcome) {
        for_each_reject(outcome, |reject| {
            *self.rejections.entry(reject_name(reject)).or_default() += 1;
        });
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &Coverage) {
        for (&k, &n) in &other.faults {
            *self.faults.entry(k).or_default() += n;
        }
        for (&k, &n) in &other.rejections {
            *self.rejections.entry(k).or_default() += n;
        }
        for (&k, &n) in &other.paths {
            *self.paths.entry(k).or_default() += n;
        }
    }

    /// Everything required that never fired, by name.
    pub fn missing(&self) -> Vec<String> {
        let faults = FaultKind::ALL
            .iter()
            .filter(|k| self.faults.get(k).copied().unwrap_or(0) == 0)
            .map(|k| format!("fault {k}"));
        let rejections = REQUIRED_REJECTIONS
            .iter()
            .filter(|r| self.rejections.get(*r).copied().unwrap_or(0) == 0)
            .map(|r| format!("rejection {r}"));
        let paths = REQUIRED_PATHS
            .iter()
            .filter(|p| self.paths.get(*p).copied().unwrap_or(0) == 0)
            .map(|p| format!("path {p}"));
        faults.chain(rejections).chain(paths).collect()
    }

    /// The counts as indented lines, zeros of required entries included.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let faults = FaultKind::ALL
            .iter()
            .map(|k| (k.as_str(), self.faults.get(k).copied().unwrap_or(0)));
        render_section(&mut out, "faults fired", faults);
        let rejections = with_required(&self.rejections, REQUIRED_REJECTIONS);
        render_section(&mut out, "rejections", rejections.into_iter());
        let paths = with_required(&self.paths, REQUIRED_PATHS);
        render_section(&mut out, "paths taken", paths.into_iter());
        out
    }
}

fn with_required(
    counts: &BTreeMap<&'static str, u64>,
    required: &[&'static str],
) -> BTreeMap<&'static str, u64> {
    let mut all = counts.clone();
    for name in required {
        all.entry(name).or_insert(0);
    }
    all
}

fn render_section(
    out: &mut String,
    title: &str,
    counts: impl Iterator<Item = (&'static str, u64)>,
) {
    let _ = writeln!(out, "  {title}:");
    let mut line = String::from("   ");
    for (name, n) in counts {
        let item = format!(" {name} {n}");
        if line.len() + item.len() > 100 {
            let _ = writeln!(out, "{line}");
            line = String::from("   ");
        }
        line.push_str(&item);
    }
    let _ = writeln!(out, "{line}");
}

/// The variant name of a rejection.
pub fn reject_name(reject: &Reject) -> &'static str {
    match reject {
        Reject::UnknownJob { .. } => "UnknownJob",
        Reject::StaleEpoch { .. } => "StaleEpoch",
        Reject::NotRunning { .. } => "NotRunning",
        Reject::NotWaiting { .. } => "NotWaiting",
        Reject::AlreadyFinished { .. } => "AlreadyFinished",
        Reject::NotRetryable { .. } => "NotRetryable",
        Reject::NotAvailable { .. } => "NotAvailable",
        Reject::NotDue { .. } => "NotDue",
        Reject::NotOverdue { .. } => "NotOverdue",
        Reject::InvalidJob { .. } => "InvalidJob",
        Reject::BatchTooLarge { .. } => "BatchTooLarge",
        Reject::NoClaimerSlot { .. } => "NoClaimerSlot",
        Reject::ClaimerLeaseLost { .. } => "ClaimerLeaseLost",
        Reject::LeaderHeld { .. } => "LeaderHeld",
        Reject::NotLeader { .. } => "NotLeader",
        Reject::SlotBusy { .. } => "SlotBusy",
        Reject::SlotOutOfRange { .. } => "SlotOutOfRange",
        Reject::PermitsMismatch { .. } => "PermitsMismatch",
        Reject::ZeroPermits => "ZeroPermits",
        Reject::SlotNotHeld { .. } => "SlotNotHeld",
        _ => "Other",
    }
}

/// Calls `f` on every rejection in `outcome`: a refused command, or each
/// refused item of a batch.
pub(crate) fn for_each_reject(outcome: &Outcome, mut f: impl FnMut(&Reject)) {
    fn batch<T>(result: &Result<Vec<Result<T, Reject>>, Reject>, f: &mut impl FnMut(&Reject)) {
        match result {
            Err(reject) => f(reject),
            Ok(items) => items.iter().filter_map(|i| i.as_ref().err()).for_each(f),
        }
    }
    fn single<T>(result: &Result<T, Reject>, f: &mut impl FnMut(&Reject)) {
        if let Err(reject) = result {
            f(reject);
        }
    }
    match outcome {
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => batch(r, &mut f),
        Outcome::Failed(r) => batch(r, &mut f),
        Outcome::Enqueued(r) => single(r, &mut f),
        Outcome::Claimed(r) => single(r, &mut f),
        Outcome::Cancelled(r) => single(r, &mut f),
        Outcome::ClaimerAcquired(r) => single(r, &mut f),
        Outcome::SlotTried(r) => single(r, &mut f),
        Outcome::LeaderElected(r) => single(r, &mut f),
        Outcome::Promoted(r) | Outcome::Pruned(r) => single(r, &mut f),
        Outcome::Rescued(r) => single(r, &mut f),
        Outcome::Resumed(r) | Outcome::Retried(r) | Outcome::SlotRenewed(r) => single(r, &mut f),
        // Answers that cannot be a rejection.
        Outcome::QueuePauseChanged(_)
        | Outcome::ClaimerReleased(_)
        | Outcome::SlotReleased(_)
        | Outcome::SessionEnded(_)
        | Outcome::LeaderResigned(_) => {}
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use weir_core::{Epoch, StateName};

    use super::*;

    #[test]
    fn batch_items_are_counted_one_by_one_and_missing_entries_are_named() {
        let mut coverage = Coverage::default();
        coverage.outcome(&Outcome::Completed(Ok(vec![
            Ok(()),
            Err(Reject::StaleEpoch {
                current: Epoch(2),
                presented: Epoch(1),
            }),
            Err(Reject::NotRunning {
                state: StateName::Completed,
            }),
        ])));
        coverage.fault(FaultKind::Crash);
        assert_eq!(coverage.rejections["StaleEpoch"], 1);
        assert_eq!(coverage.rejections["NotRunning"], 1);
        let missing = coverage.missing();
        assert!(missing.contains(&"rejection SlotBusy".to_string()));
        assert!(!missing.contains(&"rejection StaleEpoch".to_string()));
        assert!(!missing.contains(&"fault crash_mid_job".to_string()));
        assert!(coverage.render().contains("StaleEpoch 1"));
    }
}
