//! The dispatcher driven against the reference world under virtual time:
//! a miniature of what the runtime and the simulator do.

use std::collections::BTreeMap;

use weir_core::cmd;
use weir_core::*;
use weir_test_kit::queue;

fn world() -> World {
    World::new(WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 4,
            lease_ttl: Millis(2_000),
            idle_threshold: Millis(1_000),
        },
        heartbeat_stale_after: Millis(500),
        backoff: Backoff::constant(Millis(20)),
        leader_ttl: Millis(1_000),
        ..WorldConfig::default()
    })
}

fn config(process: u64) -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Millis(50),
        heartbeat_interval: Millis(100),
        maintenance_interval: Millis(100),
        shutdown_timeout: Millis(300),
        stop_grace: Millis(100),
        retry_after: Millis(20),
        claim_batch_max: 8,
        ..DispatcherConfig::new(ProcessId(process), queue(), 16)
    }
}

/// What a simulated handler does with a job.
type Behaviour = fn(&ClaimedJob) -> Option<(Millis, HandlerResult)>;

struct Harness {
    world: World,
    now: Timestamp,
    processes: Vec<Dispatcher>,
    /// (process, receipt) -> (finishes at, result); `None` result: never finishes.
    handlers: BTreeMap<(usize, Receipt), (Timestamp, HandlerResult)>,
    stopped: Vec<(usize, Receipt, StopReason)>,
    shut_down: Vec<bool>,
    behaviour: Behaviour,
    /// Report commands to lose once (their ids), to exercise retries.
    lose_next_report: bool,
    /// Whether a handler told to stop ends at once (else only an abort
    /// ends it).
    cooperative: bool,
    /// Handlers aborted, in order.
    aborted: Vec<(usize, Receipt)>,
    /// Slot renewals to lose (not sent) before answering again.
    lose_renewals: u32,
    /// Every stop and abort, with the time it was asked for.
    log: Vec<(Timestamp, usize, Receipt, String)>,
    /// The most handlers running at once, across processes.
    most_running: usize,
}

impl Harness {
    fn new(processes: usize, behaviour: Behaviour) -> Harness {
        Harness {
            world: world(),
            now: Timestamp(0),
            processes: (0..processes)
                .map(|p| Dispatcher::new(config(p as u64 + 1), Timestamp(0)))
                .collect(),
            handlers: BTreeMap::new(),
            stopped: Vec::new(),
            shut_down: vec![false; processes],
            behaviour,
            lose_next_report: false,
            cooperative: true,
            aborted: Vec::new(),
            lose_renewals: 0,
            log: Vec::new(),
            most_running: 0,
        }
    }

    /// The same harness, every process configured by `config`.
    fn with_config(mut self, config: impl Fn(u64) -> DispatcherConfig) -> Harness {
        for (p, d) in self.processes.iter_mut().enumerate() {
            *d = Dispatcher::new(config(p as u64 + 1), Timestamp(0));
        }
        self
    }

    fn enqueue_with_timeout(&mut self, n: usize, timeout: Millis) {
        let jobs = (0..n)
            .map(|_| NewJob {
                max_attempts: 3,
                timeout,
                ..NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default())
            })
            .collect();
        assert!(matches!(
            self.world
                .apply(self.now, Command::Enqueue(cmd::Enqueue { jobs })),
            Outcome::Enqueued(Ok(_))
        ));
    }

    fn enqueue(&mut self, n: usize) {
        let jobs = (0..n)
            .map(|_| NewJob {
                max_attempts: 3,
                ..NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default())
            })
            .collect();
        assert!(matches!(
            self.world
                .apply(self.now, Command::Enqueue(cmd::Enqueue { jobs })),
            Outcome::Enqueued(Ok(_))
        ));
    }

    fn feed(&mut self, p: usize, input: Input) {
        self.processes[p].handle(self.now, self.now.0 as u64, input);
        while let Some(effect) = self.processes[p].poll_effect() {
            match effect {
                Effect::Execute(id, Command::SlotRenew(cmd::SlotRenew { .. }))
                    if self.lose_renewals > 0 =>
                {
                    // Lost on the way: never applied, and said so.
                    self.lose_renewals -= 1;
                    self.processes[p].handle(self.now, 0, Input::Lost(id));
                }
                Effect::Execute(id, command) => {
                    let is_report = matches!(command, Command::Complete(cmd::Complete { .. }));
                    if is_report && self.lose_next_report {
                        // Applied, but the answer never arrives.
                        self.lose_next_report = false;
                        self.world.apply(self.now, command);
                        self.processes[p].handle(self.now, 0, Input::Lost(id));
                    } else {
                        let outcome = self.world.apply(self.now, command);
                        self.processes[p].handle(self.now, 0, Input::Outcome(id, outcome));
                    }
                }
                Effect::Prepare(jobs) => {
                    let answers = jobs.iter().map(|j| (j.receipt, Ok(Vec::new()))).collect();
                    let prepared = Input::Prepared(answers);
                    self.processes[p].handle(self.now, 0, prepared);
                }
                Effect::StartHandler(job) => {
                    if let Some((work, result)) = (self.behaviour)(&job) {
                        self.handlers
                            .insert((p, job.receipt), (self.now.plus(work), result));
                    }
                    self.most_running = self.most_running.max(self.handlers.len());
                }
                Effect::StopHandler(receipt, reason) => {
                    self.log
                        .push((self.now, p, receipt, format!("stop {reason:?}")));
                    self.stopped.push((p, receipt, reason));
                    if self.cooperative {
                        self.handlers.remove(&(p, receipt));
                        self.processes[p].handle(self.now, 0, Input::HandlerAborted(receipt));
                    }
                }
                Effect::AbortHandler(receipt) => {
                    self.log.push((self.now, p, receipt, "abort".into()));
                    self.aborted.push((p, receipt));
                    if self.handlers.remove(&(p, receipt)).is_some() {
                        self.processes[p].handle(self.now, 0, Input::HandlerAborted(receipt));
                    }
                }
                Effect::Abandon(..) => {}
                Effect::ShutdownComplete => {
                    assert!(
                        self.handlers.keys().all(|(q, _)| *q != p),
                        "process {p} completed its shutdown with a handler running"
                    );
                    self.shut_down[p] = true
                }
            }
        }
    }

    /// Runs until `done` holds or virtual time passes `limit`.
    fn run_until(&mut self, limit: Timestamp, done: impl Fn(&Harness) -> bool) {
        for p in 0..self.processes.len() {
            self.feed(p, Input::Tick);
        }
        while !done(self) {
            let next_handler = self.handlers.values().map(|(at, _)| *at).min();
            let next_timer = self
                .processes
                .iter()
                .filter_map(|d| d.poll_timeout().map(|(at, _)| at))
                .min();
            let next = next_handler
                .into_iter()
                .chain(next_timer)
                .min()
                .expect("something to wait for");
            assert!(next <= limit, "not done by {limit}");
            self.now = next.max(self.now);
            let finished: Vec<_> = self
                .handlers
                .iter()
                .filter(|(_, (at, _))| *at <= self.now)
                .map(|(k, (_, r))| (*k, r.clone()))
                .collect();
            for ((p, receipt), result) in finished {
                self.handlers.remove(&(p, receipt));
                self.feed(p, Input::HandlerDone(receipt, result));
            }
            for p in 0..self.processes.len() {
                self.feed(p, Input::Tick);
            }
            self.world.check_invariants().unwrap();
        }
    }

    fn all_terminal(&self) -> bool {
        self.world.jobs().all(|j| j.state_name().is_terminal())
    }
}

fn complete_after_10ms(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
    Some((Millis(10), HandlerResult::Complete))
}

#[test]
fn three_processes_drain_a_queue_with_few_lease_writes() {
    let mut h = Harness::new(3, complete_after_10ms);
    h.enqueue(500);
    h.run_until(Timestamp(60_000), Harness::all_terminal);
    assert!(h
        .world
        .jobs()
        .all(|j| j.state_name() == StateName::Completed));
    let stats: Vec<Stats> = h.processes.iter().map(Dispatcher::stats).collect();
    let reported: u64 = stats.iter().map(|s| s.reported).sum();
    let claims: u64 = stats.iter().map(|s| s.claims).sum();
    let refreshes: u64 = stats.iter().map(|s| s.lease_refreshes).sum();
    assert_eq!(reported, 500);
    assert!(
        stats.iter().all(|s| s.claimed > 0),
        "every process got work: {stats:?}"
    );
    assert!(
        refreshes * 10 < claims,
        "lease refreshed {refreshes} times in {claims} claims"
    );
}

#[test]
fn a_busy_process_gathers_free_workers_into_batched_claims() {
    // Handlers of different lengths finish one at a time. Claiming for
    // every freed worker would send a claim per job; gathering sends one
    // per several.
    fn staggered(job: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((
            Millis(1 + job.receipt.job.0 as u64 % 13),
            HandlerResult::Complete,
        ))
    }
    let claims_with = |batch_min: u32, delay: Millis| {
        let mut h = Harness::new(1, staggered);
        let config = DispatcherConfig {
            claim_batch_min: batch_min,
            claim_delay: delay,
            ..config(1)
        };
        h.processes[0] = Dispatcher::new(config, Timestamp(0));
        h.enqueue(400);
        h.run_until(Timestamp(60_000), Harness::all_terminal);
        assert!(h
            .world
            .jobs()
            .all(|j| j.state_name() == StateName::Completed));
        h.processes[0].stats().claims
    };
    let eager = claims_with(1, Millis(20));
    let gathered = claims_with(8, Millis(1_000));
    let timed = claims_with(16, Millis(2));
    println!("claims: eager {eager}, gathered {gathered}, timed {timed}");
    assert!(
        gathered * 4 <= eager,
        "gathering 8 of 16 workers: {gathered} claims, against {eager} claiming at once"
    );
    assert!(
        gathered <= 400 / 8 + 2,
        "each gathered claim takes at least 8 jobs: {gathered} claims for 400 jobs"
    );
    // A claim_delay shorter than the gaps between finishing handlers sends
    // claims before 16 are free: the delay bounds the wait.
    assert!(timed > 400 / 16 + 2, "the delay fired: {timed} claims");
}

#[test]
fn a_lost_completion_is_retried_and_counted_once() {
    let mut h = Harness::new(1, complete_after_10ms);
    h.enqueue(20);
    h.lose_next_report = true;
    h.run_until(Timestamp(60_000), Harness::all_terminal);
    let stats = h.processes[0].stats();
    assert_eq!(stats.lost, 1);
    assert_eq!(
        stats.reported, 20,
        "the retried batch counts each job once: {stats:?}"
    );
    assert_eq!(stats.fenced, 0);
}

#[test]
fn retries_and_snoozes_go_round_until_done() {
    fn flaky(job: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        let result = match (job.receipt.job.0 % 3, job.attempt.0) {
            (0, 1) => HandlerResult::Fail(FailError {
                retry: Retry::Backoff,
                message: "flaky".into(),
            }),
            (1, _) if job.receipt.epoch.0 == 1 => HandlerResult::Snooze(Millis(30)),
            _ => HandlerResult::Complete,
        };
        Some((Millis(5), result))
    }
    let mut h = Harness::new(2, flaky);
    h.enqueue(60);
    h.run_until(Timestamp(60_000), Harness::all_terminal);
    for job in h.world.jobs() {
        assert_eq!(job.state_name(), StateName::Completed);
        let expected_attempts = if job.id.0 % 3 == 0 { 2 } else { 1 };
        assert_eq!(job.attempt.0, expected_attempts, "job {}", job.id);
    }
}

#[test]
fn a_cancelled_job_stops_its_handler_at_the_next_heartbeat() {
    fn never(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(1_000_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, never);
    h.enqueue(1);
    h.run_until(Timestamp(1_000), |h| h.processes[0].running().count() == 1);
    h.world
        .apply(h.now, Command::Cancel(cmd::Cancel { job: JobId(1) }));
    h.run_until(Timestamp(5_000), |h| !h.stopped.is_empty());
    assert_eq!(h.stopped[0].2, StopReason::Fenced);
    assert_eq!(h.processes[0].stats().fenced, 1);
    assert_eq!(
        h.world.job(JobId(1)).unwrap().state_name(),
        StateName::Cancelled
    );
}

#[test]
fn a_cancel_notification_stops_the_handler_at_once_and_ignores_others() {
    fn never(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(1_000_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, never);
    h.enqueue(2);
    h.run_until(Timestamp(1_000), |h| h.processes[0].running().count() == 2);
    let running: Vec<Receipt> = h.processes[0].running().collect();
    // A notification for an attempt this process does not run changes nothing.
    let stranger = Receipt {
        job: JobId(99),
        epoch: Epoch(1),
    };
    h.feed(0, Input::CancelHint(stranger));
    assert!(h.stopped.is_empty());
    // Nor does one for an attempt nobody cancelled (a forged NOTIFY):
    // storage, asked, says the attempt is still this process's.
    h.feed(0, Input::CancelHint(running[1]));
    assert!(h.stopped.is_empty());
    assert_eq!(h.processes[0].stats().hints_refuted, 1);
    h.world.apply(
        h.now,
        Command::Cancel(cmd::Cancel {
            job: running[0].job,
        }),
    );
    // No time passes: the stop comes from the notification (confirmed by
    // storage at once), not the next heartbeat.
    h.feed(0, Input::CancelHint(running[0]));
    assert_eq!(h.stopped, vec![(0, running[0], StopReason::Fenced)]);
    assert_eq!(
        h.processes[0].running().collect::<Vec<_>>(),
        vec![running[1]]
    );
    assert_eq!(h.processes[0].stats().fenced, 1);
}

#[test]
fn shutdown_hands_unfinished_jobs_back_and_releases_everything() {
    shutdown_hands_back(true);
}

/// A handler that ignores its stop is aborted after the stop grace, and
/// its job goes back only once the abort has landed.
#[test]
fn shutdown_aborts_a_handler_that_ignores_its_stop_before_handing_back() {
    shutdown_hands_back(false);
}

fn shutdown_hands_back(cooperative: bool) {
    fn slow(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(1_000_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, slow);
    h.cooperative = cooperative;
    h.enqueue(3);
    h.run_until(Timestamp(1_000), |h| h.processes[0].running().count() == 3);
    assert!(h.processes[0].leader().is_some());
    h.feed(0, Input::Shutdown);
    h.run_until(Timestamp(5_000), |h| h.shut_down[0]);
    assert_eq!(h.stopped.len(), 3);
    assert!(h.stopped.iter().all(|s| s.2 == StopReason::Shutdown));
    assert_eq!(
        h.aborted.len(),
        if cooperative { 0 } else { 3 },
        "only handlers that ignore the stop are aborted"
    );
    for job in h.world.jobs() {
        assert_eq!(job.state_name(), StateName::Available, "handed back");
        assert_eq!(
            job.attempt,
            Attempt(0),
            "an interrupted attempt is refunded"
        );
    }
    let table = h.world.claimers(&queue()).unwrap();
    assert!(
        table.slots().all(|(_, lease)| lease.owner.is_none()),
        "claimer lease released"
    );
    assert!(
        h.world.leadership().leader_at(h.now).is_none(),
        "leadership resigned"
    );
    assert_eq!(h.processes[0].poll_timeout(), None);
}

#[test]
fn a_crashed_process_jobs_are_rescued_and_finished_by_another() {
    fn work(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(20), HandlerResult::Complete))
    }
    let mut h = Harness::new(2, work);
    h.enqueue(40);
    // Process 2 claims a batch, then "crashes": we stop feeding it.
    h.run_until(Timestamp(1_000), |h| h.processes[1].running().count() > 0);
    let orphaned: Vec<Receipt> = h.processes[1].running().collect();
    h.handlers.retain(|(p, _), _| *p == 0);
    let survivor = h.processes.remove(0);
    h.processes = vec![survivor];
    h.run_until(Timestamp(60_000), Harness::all_terminal);
    for receipt in orphaned {
        let job = h.world.job(receipt.job).unwrap();
        assert_eq!(job.state_name(), StateName::Completed);
        assert!(
            job.epoch > receipt.epoch,
            "rescued, so re-run under a new epoch"
        );
    }
}

/// A wake-up that arrives while a claim is in flight means work may have
/// arrived after the claim looked: the next claim goes out at once, not a
/// poll interval later.
#[test]
fn a_notification_during_a_claim_is_not_lost() {
    let mut world = world();
    let mut d = Dispatcher::new(config(1), Timestamp(0));
    let now = Timestamp(0);
    d.handle(now, 0, Input::Tick);
    let mut claim = None;
    // Answer everything but the claim, which stays in flight.
    while claim.is_none() {
        let Some(effect) = d.poll_effect() else {
            panic!("the dispatcher sent no claim")
        };
        match effect {
            Effect::Execute(id, command @ Command::Claim(cmd::Claim { .. })) => {
                claim = Some((id, command))
            }
            Effect::Execute(id, command) => {
                let outcome = world.apply(now, command);
                d.handle(now, 0, Input::Outcome(id, outcome));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (id, command) = claim.unwrap();
    // The claim found nothing; a job arrives, and its wake-up, before the
    // claim's answer does.
    let outcome = world.apply(now, command);
    let later = Timestamp(5);
    d.handle(later, 0, Input::Notified(queue()));
    d.handle(later, 0, Input::Outcome(id, outcome));
    let effects: Vec<Effect> = std::iter::from_fn(|| d.poll_effect()).collect();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Execute(_, Command::Claim(cmd::Claim { .. })))),
        "the wake-up that came during the claim still counts: the next claim goes out at once, \
         not at {:?}; effects: {effects:?}",
        d.poll_timeout()
    );
}

fn limited(process: u64, permits: u16, lease_ttl: Millis) -> DispatcherConfig {
    DispatcherConfig {
        queue_limits: vec![(queue(), permits)],
        // Longer than a renewal period: the stop before a lapse must not
        // take the whole grace.
        stop_grace: Millis(1_000),
        limits: LimitConfig {
            lease_ttl,
            retry_min: Millis(10),
            retry_max: Millis(40),
        },
        ..config(process)
    }
}

/// Under a cluster-wide limit of one, two processes never run two handlers
/// at once, and a full limit hands the job back without using an attempt.
#[test]
fn a_limited_queue_runs_one_handler_at_a_time_across_processes() {
    fn work(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(50), HandlerResult::Complete))
    }
    let mut h = Harness::new(2, work).with_config(|p| limited(p, 1, Millis(2_000)));
    h.enqueue(6);
    h.run_until(Timestamp(60_000), Harness::all_terminal);
    assert_eq!(
        h.most_running, 1,
        "one handler at a time under a limit of 1"
    );
    for job in h.world.jobs() {
        assert_eq!(job.state_name(), StateName::Completed);
        assert_eq!(job.attempt, Attempt(1), "a limit miss uses no attempt");
    }
    let sem = h
        .world
        .semaphore(&SemaphoreName::new("queue:default").unwrap());
    assert_eq!(
        sem.map(|s| s.holders(h.now)),
        Some(0),
        "every slot released"
    );
}

/// Renewals go out every third of the lease; one lost renewal is made up
/// by the next and stops nothing.
#[test]
fn one_lost_renewal_does_not_stop_a_handler() {
    fn long(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(1_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, long).with_config(|p| limited(p, 1, Millis(600)));
    h.lose_renewals = 1;
    h.enqueue(1);
    h.run_until(Timestamp(10_000), Harness::all_terminal);
    assert!(h.stopped.is_empty(), "nothing stopped: {:?}", h.log);
    assert_eq!(
        h.world.job(JobId(1)).unwrap().state_name(),
        StateName::Completed
    );
}

/// A slot whose renewals never get through: its handler is told to stop,
/// and aborted, before the lease could lapse in storage, so no other
/// process can take the slot while it runs. Its job goes back unused.
#[test]
fn a_slot_that_cannot_be_renewed_stops_its_handler_before_the_lease_lapses() {
    fn long(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(5_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, long).with_config(|p| limited(p, 1, Millis(600)));
    h.cooperative = false;
    h.lose_renewals = u32::MAX;
    h.enqueue(1);
    h.run_until(Timestamp(10_000), |h| {
        h.world.job(JobId(1)).unwrap().state_name() != StateName::Running
    });
    let (stopped_at, _, _, what) = &h.log[0];
    assert_eq!(what, "stop SlotLost");
    let (aborted_at, _, _, what) = &h.log[1];
    assert_eq!(what, "abort");
    // Claimed and slot taken at 0; the lease lasts until 600 in storage.
    assert!(
        *stopped_at < *aborted_at && *aborted_at < Timestamp(600),
        "stopped at {stopped_at}, aborted at {aborted_at}, before the lease ends at 600"
    );
    let job = h.world.job(JobId(1)).unwrap();
    assert_eq!(job.attempt, Attempt(0), "handed back, its attempt refunded");
}

/// An attempt past its deadline is stopped and aborted at once, on the
/// process's own clock, and failed (retried while attempts remain).
#[test]
fn an_attempt_past_its_deadline_is_stopped_and_failed() {
    fn long(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(5_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, long);
    h.cooperative = false;
    h.enqueue_with_timeout(1, Millis(500));
    h.run_until(Timestamp(10_000), |h| !h.aborted.is_empty());
    let (stopped_at, _, _, what) = &h.log[0];
    assert_eq!(what, "stop Timeout");
    assert_eq!(&h.log[1].3, "abort");
    // The budget is 500 ms from the claim, less a tenth as a margin.
    assert_eq!(*stopped_at, Timestamp(450));
    h.run_until(Timestamp(10_000), |h| {
        h.world.job(JobId(1)).unwrap().state_name() == StateName::Retryable
    });
    let job = h.world.job(JobId(1)).unwrap();
    assert_eq!(
        job.last_error().unwrap().message,
        "handler ran past its deadline"
    );
}
