//! The simulator's faults, and the seeded mix of them each run uses.
//!
//! Swarm testing: instead of every run injecting every fault at one rate,
//! each seed switches each fault on or off and picks its rate. A run with
//! few kinds of fault goes deep into the states those faults reach (a run
//! that only loses results retries a lot; a run that only pauses fences a
//! lot), and the seed range as a whole still covers every kind.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use weir_core::Millis;

/// One kind of fault the simulator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// A process crashes while running jobs: their completions never arrive.
    Crash,
    /// A process pauses (a GC pause, a frozen VM) longer than the heartbeat
    /// staleness limit, then carries on and reports late; it must be fenced.
    Pause,
    /// A command is applied but its result is lost on the way back.
    LostResult,
    /// A completion is delivered to storage twice.
    DuplicateCompletion,
    /// A process's clock is offset from storage's clock.
    ClockSkew,
    /// A process crashes while holding a semaphore slot.
    HolderCrash,
    /// The maintenance leader crashes.
    LeaderCrash,
    /// A claimer pauses past the claimer idle threshold, so its slot can be
    /// taken over.
    ClaimerPause,
    /// A semaphore slot try fails with an error (it was never applied).
    SlotError,
}

impl FaultKind {
    /// Every fault, in a fixed order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::LostResult,
        FaultKind::DuplicateCompletion,
        FaultKind::ClockSkew,
        FaultKind::HolderCrash,
        FaultKind::LeaderCrash,
        FaultKind::ClaimerPause,
        FaultKind::SlotError,
    ];

    /// The name printed in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash_mid_job",
            FaultKind::Pause => "pause_past_staleness",
            FaultKind::LostResult => "lost_result",
            FaultKind::DuplicateCompletion => "duplicate_completion",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::HolderCrash => "semaphore_holder_crash",
            FaultKind::LeaderCrash => "leader_crash",
            FaultKind::ClaimerPause => "claimer_pause_past_idle",
            FaultKind::SlotError => "slot_try_error",
        }
    }

    /// Faults injected when a process sends a command (rates are per
    /// command), as opposed to at a random moment.
    fn per_command(self) -> bool {
        matches!(
            self,
            FaultKind::Pause
                | FaultKind::ClaimerPause
                | FaultKind::LostResult
                | FaultKind::DuplicateCompletion
                | FaultKind::SlotError
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which faults a run may inject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultProfile {
    /// No faults: only the workload and the interleaving are random.
    None,
    /// Each fault on or off, at a rate, chosen per seed (swarm testing).
    #[default]
    Swarm,
    /// Every fault on, at rates chosen per seed.
    All,
}

impl FaultProfile {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultProfile::None => "none",
            FaultProfile::Swarm => "swarm",
            FaultProfile::All => "all",
        }
    }
}

impl fmt::Display for FaultProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultProfile, String> {
        match s {
            "none" => Ok(FaultProfile::None),
            "swarm" => Ok(FaultProfile::Swarm),
            "all" => Ok(FaultProfile::All),
            other => Err(format!(
                "unknown fault profile {other:?}: expected none, swarm or all"
            )),
        }
    }
}

/// The faults of one run and their rates, drawn from its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Per fault: for per-command faults, the chance per command in parts
    /// per million; for the others, a weight among them. Absent: off.
    rates_ppm: std::collections::BTreeMap<FaultKind, u32>,
    /// Mean time between process-level faults (crashes).
    pub crash_every: Millis,
    /// The largest clock offset of a skewed process.
    pub skew_max: Millis,
}

impl FaultPlan {
    /// No faults at all.
    pub fn none() -> FaultPlan {
        FaultPlan {
            rates_ppm: Default::default(),
            crash_every: Millis::ZERO,
            skew_max: Millis::ZERO,
        }
    }

    /// The plan for `profile`, drawing on/off and rates from `rng`.
    pub fn draw(profile: FaultProfile, rng: &mut impl Rng) -> FaultPlan {
        let mut plan = FaultPlan::none();
        if profile == FaultProfile::None {
            return plan;
        }
        for kind in FaultKind::ALL {
            // Swarm: each fault is on in about two runs of three.
            let on = profile == FaultProfile::All || rng.random_ratio(2, 3);
            if on {
                plan.rates_ppm.insert(kind, base_rate_ppm(kind, rng));
            }
        }
        plan.crash_every = Millis(rng.random_range(400..4_000));
        plan.skew_max = Millis(
            *[50, 500, 5_000]
                .get(rng.random_range(0..3))
                .expect("index in range"),
        );
        plan
    }

    /// Whether `kind` is on in this run.
    pub fn enabled(&self, kind: FaultKind) -> bool {
        self.rates_ppm.contains_key(&kind)
    }

    /// The faults that are on, in order.
    pub fn kinds(&self) -> impl Iterator<Item = FaultKind> + '_ {
        self.rates_ppm.keys().copied()
    }

    /// Rolls a per-command fault: true with its rate (never when it is off).
    pub fn roll(&self, kind: FaultKind, rng: &mut impl Rng) -> bool {
        self.roll_scaled(kind, 1, rng)
    }

    /// Rolls a per-command fault at `factor` times its rate: for the
    /// moments where a fault finds the most (a pause between a leader's
    /// election and its maintenance writes).
    pub fn roll_scaled(&self, kind: FaultKind, factor: u32, rng: &mut impl Rng) -> bool {
        debug_assert!(kind.per_command(), "{kind} is not rolled per command");
        match self.rates_ppm.get(&kind) {
            Some(&ppm) => rng.random_range(0..1_000_000) < ppm.saturating_mul(factor),
            None => false,
        }
    }

    /// Whether any process-level fault (a crash of some kind) is on.
    pub fn has_process_faults(&self) -> bool {
        self.kinds().any(|kind| {
            matches!(
                kind,
                FaultKind::Crash | FaultKind::HolderCrash | FaultKind::LeaderCrash
            )
        })
    }

    /// Picks one of the enabled process-level faults, if any, by weight.
    pub fn pick_process_fault(&self, rng: &mut impl Rng) -> Option<FaultKind> {
        let kinds: Vec<(FaultKind, u32)> = self
            .rates_ppm
            .iter()
            .filter(|(kind, _)| {
                matches!(
                    kind,
                    FaultKind::Crash | FaultKind::HolderCrash | FaultKind::LeaderCrash
                )
            })
            .map(|(&kind, &weight)| (kind, weight))
            .collect();
        let total: u32 = kinds.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rng.random_range(0..total);
        for (kind, weight) in kinds {
            if pick < weight {
                return Some(kind);
            }
            pick -= weight;
        }
        unreachable!("the pick is below the total weight")
    }
}

/// A rate for one run: per-command faults in parts per million, chosen in a
/// range that makes them happen often enough to matter and rarely enough
/// that work still gets done; process-level faults as weights.
fn base_rate_ppm(kind: FaultKind, rng: &mut impl Rng) -> u32 {
    match kind {
        FaultKind::LostResult => rng.random_range(2_000..30_000),
        FaultKind::DuplicateCompletion => rng.random_range(10_000..150_000),
        FaultKind::Pause => rng.random_range(300..3_000),
        FaultKind::ClaimerPause => rng.random_range(200..2_000),
        FaultKind::SlotError => rng.random_range(20_000..150_000),
        FaultKind::Crash | FaultKind::HolderCrash | FaultKind::LeaderCrash => {
            rng.random_range(1..10)
        }
        FaultKind::ClockSkew => 1,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn swarm_mixes_differ_between_seeds_and_all_turns_everything_on() {
        let mixes: std::collections::BTreeSet<Vec<FaultKind>> = (0..20)
            .map(|seed| {
                let plan =
                    FaultPlan::draw(FaultProfile::Swarm, &mut ChaCha8Rng::seed_from_u64(seed));
                plan.kinds().collect()
            })
            .collect();
        assert!(mixes.len() > 10, "seeds choose different mixes: {mixes:?}");
        let all = FaultPlan::draw(FaultProfile::All, &mut ChaCha8Rng::seed_from_u64(1));
        assert!(FaultKind::ALL.iter().all(|&k| all.enabled(k)));
        let none = FaultPlan::draw(FaultProfile::None, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(none.kinds().count(), 0);
    }

    #[test]
    fn profiles_parse_from_their_names() {
        for profile in [FaultProfile::None, FaultProfile::Swarm, FaultProfile::All] {
            assert_eq!(profile.as_str().parse(), Ok(profile));
        }
        assert!("most".parse::<FaultProfile>().is_err());
    }
}
