//! Model 2: claimer leases — K slots, the freshness refresh, takeovers.
//!
//! Three processes compete for K = 2 claimer slots of one queue. Every step
//! is a real [`World::apply`]:
//!
//! | action | command |
//! |---|---|
//! | `Acquire(p)` | `ClaimerAcquire` (a process without a lease asks for one; in the lapse shape also one with a lease) |
//! | `Claim(p)` | `Claim { max: 1 }` with the process's grant; the job it gets is put straight back with `Snooze` (delay 0) so the next claim finds one again |
//! | `ClaimNothing(p)` | `Claim` filtered to a kind no job has: an empty claim, which must not write the lease row |
//! | `Release(p)` | `ClaimerRelease` |
//! | `Tick` | the storage clock advances by one unit |
//!
//! Idleness needs no action: an idle claimer is one that does not claim
//! while the clock ticks. A process learns that it lost its slot when a
//! claim answers `ClaimerLeaseLost`; it then drops the grant and may
//! acquire again.
//!
//! ## Bounds
//!
//! K = 2, time `0..=10` in steps of 1, and two timings: `lease_ttl = 4`,
//! `idle_threshold = 4` ([`Timing::EVEN`]) and `lease_ttl = 5`,
//! `idle_threshold = 3` ([`Timing::ODD`]: halves round down, and idleness
//! is the shorter limit); at most one release in all (release then re-acquire at one instant
//! would otherwise bump the lease epoch forever).
//!
//! ## The fingerprint leaves the job out
//!
//! The queue holds one job, which every claim takes and puts back; its
//! epoch grows with every claim, so states that differ only in how many
//! claims happened would never meet and the space would grow with the
//! number of claims. [`ClaimerState`]'s `Hash`/`PartialEq` therefore look at
//! the clock, the claimer table, the processes and the ghosts, and not at
//! the job table. That is sound for these properties: the claimer rules
//! never read a job, and between steps the job is always available (checked
//! after every step), so two states that agree on what is hashed have the
//! same futures as far as claimers go.
//!
//! The three processes are interchangeable, so the fingerprint is also taken
//! up to a relabelling of them ([`crate::symmetry`]).
//!
//! ## The lapse shape: a process comes back
//!
//! [`ClaimerFreshness::lapse`] is a second, smaller shape of the same model
//! (two processes, K = 2, ttl 4 / idle 4, time `0..=7`): process 0 opened
//! a slot at `t = 0` and then stalled — it takes no step until its lease's
//! end by its own clock (`t = 4`), when its lease has lapsed; then it runs
//! again with the grant it kept. Every process may also `Acquire` while it
//! holds a grant, as a claim loop that restarts does: with a live lease
//! the core must answer `Reused` with the same grant (nothing written);
//! with a lapsed one it takes its own slot back or another one.
//!
//! Its liveness property, "a process whose lease lapsed can claim again",
//! is an `eventually`: on every path the returning process makes a
//! non-empty claim after its lapse. That is the honest form of "once it
//! tries while a slot is takeable or free, it gets a lease and claims",
//! because in this shape a slot is always there for it: the other process
//! holds at most one lease (reuse), so of K = 2 slots one is free,
//! released, lapsed or idle whenever the returner asks. A path ends only
//! when no step changes anything at the last instant, so it cannot end
//! with the returner still able to acquire or claim; the checker finds a
//! counterexample exactly when some path ends with the returner refused
//! (or never claiming) although a slot was there. The ghost flag is
//! stable, as the README's "Liveness" paragraph requires.
//!
//! ## What "keeps claiming" means
//!
//! The core promises (`claimer.rs`) that after a non-empty claim at `t` no
//! other process can take the slot over, and the lease cannot lapse, before
//! `t + min(idle_threshold, lease_ttl)/2` (inclusive). The ghost
//! `last_claim` remembers `t` while that window is open (and is cleared
//! after, so it does not split states); the property is that the
//! process's grant still passes the core's own `ClaimerTable::check`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use stateright::{Model, Property};
use weir_core::cmd;
use weir_core::{
    Acquired, ClaimerConfig, ClaimerGrant, ClaimerSlot, Command, JobState, Kind, Millis, Mutation,
    NewJob, Outcome, Payload, ProcessId, Reject, Request, Timestamp, World, WorldConfig,
};

use crate::check::{run, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::symmetry::{least_hash, permutations, permute};
use weir_test_kit::{index, pid, queue};

/// Competing processes.
pub const PROCESSES: usize = 3;
/// K: claimer slots per queue.
pub const SLOTS: u16 = 2;
/// The claimer lease timing under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts without a refresh.
    pub lease_ttl: Millis,
    /// A slot whose owner has not claimed for this long may be taken over.
    pub idle_threshold: Millis,
}

impl Timing {
    /// `lease_ttl = 4`, `idle_threshold = 4`.
    pub const EVEN: Timing = Timing {
        lease_ttl: Millis(4),
        idle_threshold: Millis(4),
    };

    /// `lease_ttl = 5`, `idle_threshold = 3`: odd values, so each half is
    /// rounded down, and the idle threshold is the shorter one.
    pub const ODD: Timing = Timing {
        lease_ttl: Millis(5),
        idle_threshold: Millis(3),
    };

    /// How long after a non-empty claim the slot is guaranteed to stay:
    /// `min(idle_threshold, lease_ttl)/2`, the bound the core documents.
    pub fn keep_window(self) -> Millis {
        self.idle_threshold.min(self.lease_ttl).half()
    }

    /// The least time between two writes of one lease row: after a write at
    /// `w` the row needs no refresh before `w + idle/2` nor before
    /// `w + ttl - ttl/2`.
    pub fn write_gap(self) -> Millis {
        let ttl = self.lease_ttl.0;
        self.idle_threshold.half().min(Millis(ttl - ttl / 2))
    }
}

/// The clock stops here.
pub const TIME_MAX: Timestamp = Timestamp(10);
/// The clock of the lapse shape stops here.
pub const LAPSE_TIME_MAX: Timestamp = Timestamp(7);
/// Processes that take steps in the lapse shape (the third never does).
pub const LAPSE_PROCESSES: usize = 2;
/// Releases allowed in one run.
pub const RELEASES: u8 = 1;

/// At most K processes hold a lease that passes the core's check, on
/// distinct slots; and the table counts at most K active slots.
pub const AT_MOST_K: &str = "at most K active claimers";
/// A claimer that claimed within the last `min(idle, ttl)/2` still owns its
/// slot: not taken over, not lapsed.
pub const BUSY_KEEPS_SLOT: &str = "a claimer that keeps claiming keeps its slot";
/// The lease row is written only after a non-empty claim (or by an
/// acquisition), and two writes of one lease are at least
/// [`Timing::write_gap`] apart: a busy claimer writes a bounded number of times per
/// unit of time, not once per batch.
pub const WRITES_BOUNDED: &str = "lease writes are bounded per unit of time";
/// Example: an idle claimer's slot was taken over by another process.
pub const IDLE_TAKEN_OVER: &str = "an idle claimer's slot is taken over";
/// Example: a non-empty claim that did not write the lease row.
pub const CLAIM_WITHOUT_WRITE: &str = "a busy claimer claims without a lease write";
/// An acquisition by a process whose lease is live gives that lease back
/// (`Acquired::Reused`, the same grant), writing nothing.
pub const REUSES_LIVE_LEASE: &str = "a process asking again gets its live lease back";
/// Liveness (lapse shape): the process whose lease lapsed while it stalled
/// makes a non-empty claim again.
pub const LAPSED_CLAIMS_AGAIN: &str = "a process whose lease lapsed can claim again";
/// Example (lapse shape): an acquisition answered `Reused`.
pub const REUSED: &str = "a live lease is reused";
/// Example (lapse shape): the returning process took its own lapsed slot
/// back.
pub const OWN_SLOT_RETAKEN: &str = "a returning process takes its own lapsed slot back";
/// Example (lapse shape): the returning process found its slot gone to the
/// other process and got another slot.
pub const RETURNER_MOVED: &str = "a returning process gets another slot";

/// The claimer-freshness model.
#[derive(Clone, Debug)]
pub struct ClaimerFreshness {
    timing: Timing,
    mutation: Option<Mutation>,
    lapse: bool,
}

impl ClaimerFreshness {
    /// The model over the correct core, with [`Timing::EVEN`].
    pub fn new() -> ClaimerFreshness {
        ClaimerFreshness {
            timing: Timing::EVEN,
            mutation: None,
            lapse: false,
        }
    }

    /// The lapse shape (see the module docs), with [`Timing::EVEN`].
    pub fn lapse() -> ClaimerFreshness {
        ClaimerFreshness {
            lapse: true,
            ..ClaimerFreshness::new()
        }
    }

    /// The same model with another lease timing.
    pub fn with_timing(self, timing: Timing) -> ClaimerFreshness {
        ClaimerFreshness { timing, ..self }
    }

    /// The model over a world that makes the deliberate mistake `m`.
    pub fn with_mutation(m: Mutation) -> ClaimerFreshness {
        ClaimerFreshness::new().mutated(m)
    }

    /// The same shape over a world that makes the deliberate mistake `m`.
    pub fn mutated(self, m: Mutation) -> ClaimerFreshness {
        ClaimerFreshness {
            mutation: Some(m),
            ..self
        }
    }

    fn processes(&self) -> usize {
        if self.lapse {
            LAPSE_PROCESSES
        } else {
            PROCESSES
        }
    }

    fn time_max(&self) -> Timestamp {
        if self.lapse {
            LAPSE_TIME_MAX
        } else {
            TIME_MAX
        }
    }
}

impl Default for ClaimerFreshness {
    fn default() -> ClaimerFreshness {
        ClaimerFreshness::new()
    }
}

/// One process, as it sees itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claimer {
    /// The lease it believes it holds.
    pub grant: Option<ClaimerGrant>,
    /// Ghost: its last non-empty claim under `grant`, while the keep
    /// window after it is open.
    pub last_claim: Option<Timestamp>,
    /// Ghost: the last write of its lease row, while another write would
    /// still be too soon.
    pub last_write: Option<Timestamp>,
    /// Lapse shape: it takes no step before this time (the end of the
    /// lease it got at `t = 0`), and is the returning process for good.
    pub stalled_until: Option<Timestamp>,
}

impl Claimer {
    /// It no longer believes it holds a lease.
    fn drop_grant(&mut self) {
        *self = Claimer {
            stalled_until: self.stalled_until,
            ..Claimer::default()
        };
    }
}

/// Ghosts of the lapse shape (all false in the other one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LapseGhosts {
    /// See [`LAPSED_CLAIMS_AGAIN`].
    pub returned: bool,
    /// See [`REUSED`].
    pub reused: bool,
    /// See [`OWN_SLOT_RETAKEN`].
    pub own_retaken: bool,
    /// See [`RETURNER_MOVED`].
    pub moved: bool,
}

/// A state of the claimer model. Equality and hashing leave the job table
/// out (see the module docs).
#[derive(Clone, Debug)]
pub struct ClaimerState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The processes.
    pub procs: [Claimer; PROCESSES],
    /// Releases left.
    pub releases: u8,
    /// Ghost: an idle claimer's slot was taken over.
    pub idle_taken_over: bool,
    /// Ghost: a non-empty claim wrote nothing.
    pub claim_without_write: bool,
    /// Ghosts of the lapse shape.
    pub lapse: LapseGhosts,
    /// Broken properties.
    pub faults: Faults,
}

impl ClaimerState {
    /// What equality looks at: everything but the job table.
    fn key(&self) -> impl Hash + PartialEq + '_ {
        (
            self.world.now(),
            self.world.claimers(&queue()),
            &self.procs,
            self.releases,
            (self.idle_taken_over, self.claim_without_write),
            self.lapse,
            &self.faults,
        )
    }

    /// The same, with processes relabelled by `perm` (see
    /// [`crate::symmetry`]; the three processes are interchangeable).
    fn relabelled(&self, perm: &[usize]) -> impl Hash {
        let relabel = |id: ProcessId| pid(perm[index(id)]);
        let rows: Vec<_> = self
            .world
            .claimers(&queue())
            .into_iter()
            .flat_map(|table| table.slots())
            .map(|(slot, lease)| {
                let owner = lease.owner.map(relabel);
                (
                    slot,
                    owner,
                    lease.lease_epoch,
                    lease.last_claimed_at,
                    lease.expires_at,
                )
            })
            .collect();
        let procs = permute(&self.procs, perm).map(|proc| Claimer {
            grant: proc.grant.map(|g| ClaimerGrant {
                process: relabel(g.process),
                ..g
            }),
            ..proc
        });
        (
            self.world.now(),
            rows,
            procs,
            self.releases,
            (self.idle_taken_over, self.claim_without_write),
            self.lapse,
            self.faults.clone(),
        )
    }
}

impl PartialEq for ClaimerState {
    fn eq(&self, other: &ClaimerState) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ClaimerState {}

impl Hash for ClaimerState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        static PERMS: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
        let perms = PERMS.get_or_init(|| permutations(PROCESSES));
        state.write_u64(least_hash(perms, |perm| self.relabelled(perm)));
    }
}

/// A step of the claimer model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimerAction {
    /// The process asks for a lease.
    Acquire(usize),
    /// The process claims (and gets the job).
    Claim(usize),
    /// The process claims and finds nothing.
    ClaimNothing(usize),
    /// The process gives its lease up.
    Release(usize),
    /// Time passes.
    Tick,
}

fn config(timing: Timing) -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: SLOTS,
            lease_ttl: timing.lease_ttl,
            idle_threshold: timing.idle_threshold,
        },
        batch_max: 16,
        ..WorldConfig::default()
    }
}

impl ClaimerState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    fn run<R: Request>(&mut self, request: R) -> Option<R::Output> {
        let now = self.now();
        run(&mut self.world, now, request, &mut self.faults)
    }

    fn owners(&self) -> BTreeMap<ClaimerSlot, Option<ProcessId>> {
        self.world
            .claimers(&queue())
            .map(|table| table.slots().map(|(s, l)| (s, l.owner)).collect())
            .unwrap_or_default()
    }

    /// Records a write of `p`'s lease row at `now`, checking the gap.
    fn wrote(&mut self, p: usize, what: &str) {
        let now = self.now();
        if let Some(w) = self.procs[p].last_write {
            self.faults.push(
                WRITES_BOUNDED,
                format!("process {p} wrote its lease row at {w} and again at {now} ({what})"),
            );
        }
        self.procs[p].last_write = Some(now);
    }

    fn acquire(&mut self, p: usize) {
        let owners = self.owners();
        let now = self.now();
        let live = self.procs[p].grant.filter(|grant| {
            self.world
                .claimers(&queue())
                .is_some_and(|table| table.check(grant, now).is_ok())
        });
        let command = cmd::ClaimerAcquire {
            queue: queue(),
            process: pid(p),
        };
        let Some(result) = self.run(command) else {
            return;
        };
        if let Some(live) = live {
            if result != Ok((live, Acquired::Reused)) {
                self.faults.push(
                    REUSES_LIVE_LEASE,
                    format!("process {p} holds {live:?} and asked again: {result:?}"),
                );
            }
        }
        let (grant, how) = match result {
            Ok(acquired) => acquired,
            Err(Reject::NoClaimerSlot { .. }) => {
                // It now knows it holds no lease.
                self.procs[p].drop_grant();
                return;
            }
            Err(other) => panic!("acquire answered {other:?}"),
        };
        if how == Acquired::Reused {
            // The same lease row: its ghosts still apply.
            self.lapse.reused = true;
            self.procs[p].grant = Some(grant);
            return;
        }
        let returning = self.procs[p].stalled_until.is_some();
        let me = &mut self.procs[p];
        me.grant = Some(grant);
        me.last_claim = None;
        // A new lease row: writes of the old one do not count against it.
        me.last_write = None;
        match how {
            Acquired::Reused => {}
            Acquired::Opened => {
                self.lapse.moved |= returning;
                self.wrote(p, "opened");
            }
            Acquired::TakenOver => {
                let previous = owners.get(&grant.slot).copied().flatten();
                if previous == Some(pid(p)) {
                    self.lapse.own_retaken |= returning;
                } else {
                    self.lapse.moved |= returning;
                }
                let victim = (0..PROCESSES).find(|&q| Some(pid(q)) == previous && q != p);
                if victim.is_some_and(|q| self.procs[q].grant.is_some()) {
                    self.idle_taken_over = true;
                }
                self.wrote(p, "taken over");
            }
        }
    }

    fn claim(&mut self, p: usize, wanted: bool) {
        let Some(claimer) = self.procs[p].grant else {
            return;
        };
        let kinds = (!wanted).then(|| BTreeSet::from([Kind::new("absent").expect("a valid kind")]));
        let command = cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds,
        };
        let Some(result) = self.run(command) else {
            return;
        };
        let claimed = match result {
            Ok(claimed) => claimed,
            Err(Reject::ClaimerLeaseLost { .. }) => {
                self.procs[p].drop_grant();
                return;
            }
            Err(other) => panic!("claim answered {other:?}"),
        };
        assert_eq!(
            claimed.jobs.len(),
            usize::from(wanted),
            "the one job is always available"
        );
        if claimed.lease_refreshed {
            if claimed.jobs.is_empty() {
                self.faults.push(
                    WRITES_BOUNDED,
                    format!("an empty claim by {p} wrote its lease"),
                );
            }
            self.wrote(p, "refreshed");
        }
        let Some(job) = claimed.jobs.first() else {
            return;
        };
        self.procs[p].last_claim = Some(self.now());
        if self.procs[p].stalled_until.is_some() {
            self.lapse.returned = true;
        }
        if !claimed.lease_refreshed {
            self.claim_without_write = true;
        }
        let snooze = cmd::Snooze {
            snoozes: vec![(job.receipt, Millis(0))],
        };
        let put_back = self.run(snooze);
        assert!(
            put_back.is_none() || matches!(&put_back, Some(Ok(items)) if items[0].is_ok()),
            "the claimed job goes back: {put_back:?}"
        );
    }

    fn release(&mut self, p: usize) {
        let Some(claimer) = self.procs[p].grant else {
            return;
        };
        self.releases -= 1;
        self.procs[p].drop_grant();
        self.run(cmd::ClaimerRelease {
            queue: queue(),
            claimer,
        });
    }

    /// Forgets ghost times that can no longer matter, so they do not split
    /// states.
    fn forget(&mut self, timing: Timing) {
        let now = self.now();
        for proc in &mut self.procs {
            if proc
                .last_claim
                .is_some_and(|t| now > t.plus(timing.keep_window()))
            {
                proc.last_claim = None;
            }
            if proc
                .last_write
                .is_some_and(|w| now >= w.plus(timing.write_gap()))
            {
                proc.last_write = None;
            }
        }
    }
}

fn at_most_k(state: &ClaimerState) -> bool {
    let now = state.now();
    let Some(table) = state.world.claimers(&queue()) else {
        return true;
    };
    let live: BTreeSet<ClaimerSlot> = state
        .procs
        .iter()
        .filter_map(|proc| proc.grant)
        .filter(|grant| table.check(grant, now).is_ok())
        .map(|grant| grant.slot)
        .collect();
    let holders = state
        .procs
        .iter()
        .filter_map(|proc| proc.grant)
        .filter(|grant| table.check(grant, now).is_ok())
        .count();
    holders == live.len()
        && holders <= usize::from(SLOTS)
        && table.active(now) <= usize::from(SLOTS)
}

fn busy_keeps_slot(state: &ClaimerState) -> bool {
    let now = state.now();
    let table = state.world.claimers(&queue());
    state
        .procs
        .iter()
        .all(|proc| match (proc.grant, proc.last_claim) {
            (Some(grant), Some(_)) => table.is_some_and(|t| t.check(&grant, now).is_ok()),
            _ => true,
        })
}

impl Model for ClaimerFreshness {
    type State = ClaimerState;
    type Action = ClaimerAction;

    fn init_states(&self) -> Vec<ClaimerState> {
        let mut world = World::new(config(self.timing));
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        let job = NewJob::new(
            queue(),
            Kind::new("work").expect("a valid kind"),
            Payload::default(),
        );
        let enqueued = world.apply(
            Timestamp::ZERO,
            Command::Enqueue(cmd::Enqueue { jobs: vec![job] }),
        );
        assert!(matches!(enqueued, Outcome::Enqueued(Ok(_))), "{enqueued:?}");
        let mut state = ClaimerState {
            world,
            procs: [Claimer::default(); PROCESSES],
            releases: RELEASES,
            idle_taken_over: false,
            claim_without_write: false,
            lapse: LapseGhosts::default(),
            faults: Faults::default(),
        };
        if self.lapse {
            // Process 0 got a lease at t = 0, then stalled until it ends.
            state.acquire(0);
            assert!(state.procs[0].grant.is_some() && state.faults.is_empty());
            state.procs[0].stalled_until = Some(Timestamp::ZERO.plus(self.timing.lease_ttl));
        }
        vec![state]
    }

    fn actions(&self, state: &ClaimerState, actions: &mut Vec<ClaimerAction>) {
        if !state.faults.is_empty() {
            return;
        }
        for (p, proc) in state.procs.iter().enumerate().take(self.processes()) {
            if proc.stalled_until.is_some_and(|until| state.now() < until) {
                continue;
            }
            // In the lapse shape a process may also ask again while it
            // holds a grant (live: reuse; lapsed: a new lease).
            if proc.grant.is_none() || self.lapse {
                actions.push(ClaimerAction::Acquire(p));
            }
            if proc.grant.is_none() {
                continue;
            }
            actions.push(ClaimerAction::Claim(p));
            actions.push(ClaimerAction::ClaimNothing(p));
            if state.releases > 0 {
                actions.push(ClaimerAction::Release(p));
            }
        }
        if state.now() < self.time_max() {
            actions.push(ClaimerAction::Tick);
        }
    }

    fn next_state(&self, last: &ClaimerState, action: ClaimerAction) -> Option<ClaimerState> {
        let mut next = last.clone();
        match action {
            ClaimerAction::Acquire(p) => next.acquire(p),
            ClaimerAction::Claim(p) => next.claim(p, true),
            ClaimerAction::ClaimNothing(p) => next.claim(p, false),
            ClaimerAction::Release(p) => next.release(p),
            ClaimerAction::Tick => {
                let now = next.now().plus(Millis(1));
                tick(&mut next.world, now, &mut next.faults);
            }
        }
        next.forget(self.timing);
        if next.faults.is_empty() {
            let job = next.world.jobs().next().expect("one job");
            assert!(
                matches!(job.state, JobState::Available { .. }),
                "between steps the job is available, so leaving it out of the fingerprint is sound"
            );
        }
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(WORLD_INVARIANTS, |_, s: &ClaimerState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &ClaimerState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(AT_MOST_K, |_, s: &ClaimerState| at_most_k(s)),
            Property::always(BUSY_KEEPS_SLOT, |_, s: &ClaimerState| busy_keeps_slot(s)),
            Property::always(WRITES_BOUNDED, |_, s: &ClaimerState| {
                s.faults.holds(WRITES_BOUNDED)
            }),
            Property::sometimes(IDLE_TAKEN_OVER, |_, s: &ClaimerState| s.idle_taken_over),
            Property::sometimes(CLAIM_WITHOUT_WRITE, |_, s: &ClaimerState| {
                s.claim_without_write
            }),
        ];
        if self.lapse {
            properties.extend([
                Property::always(REUSES_LIVE_LEASE, |_, s: &ClaimerState| {
                    s.faults.holds(REUSES_LIVE_LEASE)
                }),
                Property::eventually(LAPSED_CLAIMS_AGAIN, |_, s: &ClaimerState| s.lapse.returned),
                Property::sometimes(REUSED, |_, s: &ClaimerState| s.lapse.reused),
                Property::sometimes(OWN_SLOT_RETAKEN, |_, s: &ClaimerState| s.lapse.own_retaken),
                Property::sometimes(RETURNER_MOVED, |_, s: &ClaimerState| s.lapse.moved),
            ]);
        }
        properties
    }
}
