//! Model 4: maintenance leadership — terms, renewal, resignation, and the
//! writes of a leader that was deposed without knowing it.
//!
//! Three processes compete for the leader lease. Every step is a real
//! [`World::apply`]:
//!
//! | action | command |
//! |---|---|
//! | `Elect(p)` | `LeaderElect` (wins a free lease, renews its own, or is refused) |
//! | `Resign(p)` | `LeaderResign` with the process's grant |
//! | `Write(p)` | `Promote { max: 1 }` with the process's grant: a maintenance write |
//! | `Crash(p)` | none: a leader dies; its lease lapses by itself |
//! | `Tick` | the storage clock advances by one unit |
//!
//! A process keeps its grant until it resigns or a write of its is refused,
//! so it may write long after its lease lapsed and someone else was elected:
//! that is the deposed leader, and its writes must be refused.
//!
//! A process believes it leads until `now` reaches the end of the lease it
//! was granted (`elected_at + leader_ttl`, moved on by each renewal): the
//! same clock as the world's, so "one leader at a time" is a property
//! of beliefs, checked with ghost state rather than read back from the core.
//!
//! ## Bounds
//!
//! `leader_ttl = 3`, time `0..=8` in steps of 1, at most two resignations
//! and one crash. The three processes are interchangeable; the fingerprint
//! is taken up to relabelling them ([`crate::symmetry`]).

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use stateright::{Model, Property};
use weir_core::cmd;
use weir_core::{
    LeaderGrant, LeaderTerm, Leadership, Millis, Mutation, ProcessId, Reject, Request, Timestamp,
    World, WorldConfig,
};

use crate::check::{run, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::symmetry::{least_hash, permutations, permute};
use weir_test_kit::{index, pid};

/// Competing processes.
pub const PROCESSES: usize = 3;
/// How long a leader lease lasts without renewal.
pub const LEADER_TTL: Millis = Millis(3);
/// The clock stops here.
pub const TIME_MAX: Timestamp = Timestamp(8);
/// Resignations allowed in one run.
pub const RESIGNS: u8 = 2;
/// Crashes allowed in one run.
pub const CRASHES: u8 = 1;

/// Every grant of a term went to one process (ghost: the latest term and
/// its holder, from the election outcomes), and terms never go back.
pub const ONE_LEADER_PER_TERM: &str = "at most one leader per term";
/// Every accepted maintenance write carried the latest term, came from its
/// holder, and was made while its lease was live.
pub const DEPOSED_REJECTED: &str = "a deposed leader's write is rejected";
/// At most one live process believes it leads.
pub const ONE_BELIEVER: &str = "at most one process believes it leads";
/// Example: a deposed leader's write was refused with `NotLeader`.
pub const DEPOSED_WRITE_REFUSED: &str = "a deposed leader writes and is refused";
/// Example: leadership passed from one process to another.
pub const HANDED_OVER: &str = "leadership changes hands";

/// The leadership model.
#[derive(Clone, Debug, Default)]
pub struct LeaderTerms {
    mutation: Option<Mutation>,
}

impl LeaderTerms {
    /// The model over the correct core.
    pub fn new() -> LeaderTerms {
        LeaderTerms::default()
    }

    /// The same model over a world that makes the deliberate mistake `m`.
    pub fn with_mutation(m: Mutation) -> LeaderTerms {
        LeaderTerms { mutation: Some(m) }
    }
}

/// One process, as it sees itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Its grant, and when it believes its lease ends.
    pub lease: Option<(LeaderGrant, Timestamp)>,
    /// Dead: takes no further step.
    pub crashed: bool,
}

/// Ghost: the latest term granted, to whom, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Latest {
    /// The term.
    pub term: LeaderTerm,
    /// Its holder.
    pub holder: ProcessId,
    /// When its lease ends (or ended, if resigned).
    pub until: Timestamp,
}

/// A state of the leadership model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The processes.
    pub procs: [Candidate; PROCESSES],
    /// Resignations left.
    pub resigns: u8,
    /// Crashes left.
    pub crashes: u8,
    /// Ghost: the latest term granted.
    pub latest: Option<Latest>,
    /// Ghost: see [`DEPOSED_WRITE_REFUSED`].
    pub deposed_refused: bool,
    /// Ghost: see [`HANDED_OVER`].
    pub handed_over: bool,
    /// Broken properties.
    pub faults: Faults,
}

/// A step of the leadership model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaderAction {
    /// Become or stay leader.
    Elect(usize),
    /// Step down.
    Resign(usize),
    /// A maintenance write with the process's grant.
    Write(usize),
    /// The process dies.
    Crash(usize),
    /// Time passes.
    Tick,
}

fn config() -> WorldConfig {
    WorldConfig {
        leader_ttl: LEADER_TTL,
        batch_max: 16,
        ..WorldConfig::default()
    }
}

impl LeaderState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    fn run<R: Request>(&mut self, request: R) -> Option<R::Output> {
        let now = self.now();
        run(&mut self.world, now, request, &mut self.faults)
    }

    fn elect(&mut self, p: usize) {
        let until = self.now().plus(LEADER_TTL);
        let Some(result) = self.run(cmd::LeaderElect { process: pid(p) }) else {
            return;
        };
        let grant = match result {
            Ok(grant) => grant,
            Err(Reject::LeaderHeld { .. }) => return,
            Err(other) => panic!("election answered {other:?}"),
        };
        if grant.process != pid(p) {
            self.faults.push(
                ONE_LEADER_PER_TERM,
                format!("process {p} was handed {grant:?}"),
            );
        }
        self.procs[p].lease = Some((grant, until));
        let fresh = Latest {
            term: grant.term,
            holder: grant.process,
            until,
        };
        match self.latest {
            Some(latest) if grant.term < latest.term => self.faults.push(
                ONE_LEADER_PER_TERM,
                format!("term {} granted after term {}", grant.term, latest.term),
            ),
            Some(latest) if grant.term == latest.term && grant.process != latest.holder => {
                self.faults.push(
                    ONE_LEADER_PER_TERM,
                    format!(
                        "term {} granted to {} and to {}",
                        grant.term, latest.holder, grant.process
                    ),
                )
            }
            Some(latest) => {
                if latest.holder != grant.process {
                    self.handed_over = true;
                }
                self.latest = Some(fresh);
            }
            None => self.latest = Some(fresh),
        }
    }

    fn resign(&mut self, p: usize) {
        let Some((leader, _)) = self.procs[p].lease.take() else {
            return;
        };
        self.resigns -= 1;
        let Some(ended) = self.run(cmd::LeaderResign { leader }) else {
            return;
        };
        let now = self.now();
        if let Some(latest) = &mut self.latest {
            if ended && latest.term == leader.term {
                latest.until = latest.until.min(now);
            }
        }
    }

    fn write(&mut self, p: usize) {
        let Some((leader, _)) = self.procs[p].lease else {
            return;
        };
        let now = self.now();
        let Some(result) = self.run(cmd::Promote { leader, max: 1 }) else {
            return;
        };
        let legit = self.latest.is_some_and(|latest| {
            latest.term == leader.term && latest.holder == leader.process && now < latest.until
        });
        match result {
            Ok(_) if !legit => self.faults.push(
                DEPOSED_REJECTED,
                format!(
                    "write with {leader:?} accepted at {now}; latest is {:?}",
                    self.latest
                ),
            ),
            Ok(_) => {}
            Err(Reject::NotLeader { .. }) => {
                self.procs[p].lease = None;
                if self.latest.is_some_and(|latest| latest.term > leader.term) {
                    self.deposed_refused = true;
                }
            }
            Err(other) => panic!("promote answered {other:?}"),
        }
    }

    /// The fingerprint key with processes relabelled by `perm`.
    fn relabelled(&self, perm: &[usize]) -> impl Hash + '_ {
        let relabel = |id: ProcessId| pid(perm[index(id)]);
        let leadership = self.world.leadership();
        let leadership = Leadership {
            holder: leadership.holder.map(relabel),
            ..*leadership
        };
        let procs = permute(&self.procs, perm).map(|c| Candidate {
            lease: c.lease.map(|(g, until)| {
                let g = LeaderGrant {
                    process: relabel(g.process),
                    ..g
                };
                (g, until)
            }),
            ..c
        });
        let latest = self.latest.map(|l| Latest {
            holder: relabel(l.holder),
            ..l
        });
        (
            self.now(),
            leadership,
            procs,
            (self.resigns, self.crashes),
            latest,
            (self.deposed_refused, self.handed_over),
            &self.faults,
        )
    }
}

impl Hash for LeaderState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        static PERMS: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
        let perms = PERMS.get_or_init(|| permutations(PROCESSES));
        state.write_u64(least_hash(perms, |perm| self.relabelled(perm)));
    }
}

fn one_believer(state: &LeaderState) -> bool {
    let now = state.now();
    let believers = state
        .procs
        .iter()
        .filter(|c| !c.crashed && c.lease.is_some_and(|(_, until)| now < until))
        .count();
    believers <= 1
}

impl Model for LeaderTerms {
    type State = LeaderState;
    type Action = LeaderAction;

    fn init_states(&self) -> Vec<LeaderState> {
        let mut world = World::new(config());
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        vec![LeaderState {
            world,
            procs: [Candidate::default(); PROCESSES],
            resigns: RESIGNS,
            crashes: CRASHES,
            latest: None,
            deposed_refused: false,
            handed_over: false,
            faults: Faults::default(),
        }]
    }

    fn actions(&self, state: &LeaderState, actions: &mut Vec<LeaderAction>) {
        if !state.faults.is_empty() {
            return;
        }
        for (p, c) in state.procs.iter().enumerate() {
            if c.crashed {
                continue;
            }
            actions.push(LeaderAction::Elect(p));
            if c.lease.is_some() {
                actions.push(LeaderAction::Write(p));
                if state.resigns > 0 {
                    actions.push(LeaderAction::Resign(p));
                }
                // A process that leads nothing and dies is one that never
                // steps again, which interleaving already explores.
                if state.crashes > 0 {
                    actions.push(LeaderAction::Crash(p));
                }
            }
        }
        if state.now() < TIME_MAX {
            actions.push(LeaderAction::Tick);
        }
    }

    fn next_state(&self, last: &LeaderState, action: LeaderAction) -> Option<LeaderState> {
        let mut next = last.clone();
        match action {
            LeaderAction::Elect(p) => next.elect(p),
            LeaderAction::Resign(p) => next.resign(p),
            LeaderAction::Write(p) => next.write(p),
            LeaderAction::Crash(p) => {
                next.crashes -= 1;
                next.procs[p] = Candidate {
                    lease: None,
                    crashed: true,
                };
            }
            LeaderAction::Tick => {
                let now = next.now().plus(Millis(1));
                tick(&mut next.world, now, &mut next.faults);
            }
        }
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(WORLD_INVARIANTS, |_, s: &LeaderState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &LeaderState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(ONE_LEADER_PER_TERM, |_, s: &LeaderState| {
                s.faults.holds(ONE_LEADER_PER_TERM)
            }),
            Property::always(DEPOSED_REJECTED, |_, s: &LeaderState| {
                s.faults.holds(DEPOSED_REJECTED)
            }),
            Property::always(ONE_BELIEVER, |_, s: &LeaderState| one_believer(s)),
            Property::sometimes(DEPOSED_WRITE_REFUSED, |_, s: &LeaderState| {
                s.deposed_refused
            }),
            Property::sometimes(HANDED_OVER, |_, s: &LeaderState| s.handed_over),
        ]
    }
}
