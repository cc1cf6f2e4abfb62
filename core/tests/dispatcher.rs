//! The dispatcher driven against the reference world under virtual time:
//! a miniature of what the runtime and the simulator do.

use std::collections::BTreeMap;

use weir_core::*;

fn queue() -> QueueName {
    QueueName::new("default").unwrap()
}

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
        }
    }

    fn enqueue(&mut self, n: usize) {
        let jobs = (0..n)
            .map(|_| NewJob {
                max_attempts: 3,
                ..NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default())
            })
            .collect();
        assert!(matches!(
            self.world.apply(self.now, Command::Enqueue { jobs }),
            Outcome::Enqueued(Ok(_))
        ));
    }

    fn feed(&mut self, p: usize, input: Input) {
        self.processes[p].handle(self.now, self.now.0 as u64, input);
        while let Some(effect) = self.processes[p].poll_effect() {
            match effect {
                Effect::Execute(id, command) => {
                    let is_report = matches!(command, Command::Complete { .. });
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
                Effect::StartHandler(job) => {
                    if let Some((work, result)) = (self.behaviour)(&job) {
                        self.handlers
                            .insert((p, job.receipt), (self.now.plus(work), result));
                    }
                }
                Effect::StopHandler(receipt, reason) => {
                    self.handlers.remove(&(p, receipt));
                    self.stopped.push((p, receipt, reason));
                }
                Effect::ShutdownComplete => self.shut_down[p] = true,
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
    h.world.apply(h.now, Command::Cancel { job: JobId(1) });
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
    h.feed(0, Input::Fenced(stranger));
    assert!(h.stopped.is_empty());
    h.world.apply(
        h.now,
        Command::Cancel {
            job: running[0].job,
        },
    );
    // No time passes: the stop comes from the notification, not a heartbeat.
    h.feed(0, Input::Fenced(running[0]));
    assert_eq!(h.stopped, vec![(0, running[0], StopReason::Fenced)]);
    assert_eq!(
        h.processes[0].running().collect::<Vec<_>>(),
        vec![running[1]]
    );
    assert_eq!(h.processes[0].stats().fenced, 1);
}

#[test]
fn shutdown_hands_unfinished_jobs_back_and_releases_everything() {
    fn slow(_: &ClaimedJob) -> Option<(Millis, HandlerResult)> {
        Some((Millis(1_000_000), HandlerResult::Complete))
    }
    let mut h = Harness::new(1, slow);
    h.enqueue(3);
    h.run_until(Timestamp(1_000), |h| h.processes[0].running().count() == 3);
    assert!(h.processes[0].leader().is_some());
    h.feed(0, Input::Shutdown);
    h.run_until(Timestamp(5_000), |h| h.shut_down[0]);
    assert_eq!(h.stopped.len(), 3);
    assert!(h.stopped.iter().all(|s| s.2 == StopReason::Shutdown));
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
