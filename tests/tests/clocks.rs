//! The pool under a skewed and a stepping wall clock.
//!
//! A worker process (`clock_worker`) runs under libfaketime, which shifts
//! what it reads from the wall clock (`CLOCK_REALTIME`) and leaves the
//! monotonic clock alone (`DONT_FAKE_MONOTONIC=1`), as a clock that NTP
//! steps, or a machine whose clock is simply wrong, would. Storage (a
//! throwaway Postgres) keeps the true time, and this test leads
//! maintenance with it. The pool must keep every promise whatever its
//! wall clock says: its heartbeats keep coming, its time budgets are the
//! ones storage set.
//!
//! libfaketime is Debian's `faketime` package; the test fails with the
//! install command when it is missing (`WEIR_LIBFAKETIME` points at
//! another copy).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::core::cmd;
use weir::core::{Command, JobId, ProcessId, StateName};
use weir::{Backend, BackendExt, Client, InsertOptions};
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig};
use weir_tests::clocks::{world_config, Sleep};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn libfaketime() -> PathBuf {
    let path =
        std::env::var_os("WEIR_LIBFAKETIME").map_or(PathBuf::from(LIBFAKETIME), PathBuf::from);
    assert!(
        path.exists(),
        "libfaketime is not at {}: install it (`apt-get install faketime` on Debian) \
         or set WEIR_LIBFAKETIME to its path",
        path.display()
    );
    path
}

/// The worker process, its clock's offset file, and the file's directory.
struct Worker {
    child: Child,
    offset_file: PathBuf,
}

impl Worker {
    /// Starts a worker whose wall clock reads `offset` (libfaketime's
    /// syntax: `+10` is ten seconds ahead, `-120` two minutes behind).
    fn start(db: &TestDatabase, process: u64, offset: &str) -> Worker {
        let dir = std::env::temp_dir().join(format!("weir-clock-{}-{process}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let offset_file = dir.join("offset");
        std::fs::write(&offset_file, offset).unwrap();
        let mut child = Process::new(env!("CARGO_BIN_EXE_clock_worker"))
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &offset_file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .env("WEIR_CLOCK_URL", db.url_as_app_user())
            .env("WEIR_CLOCK_PROCESS", process.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the clock worker starts");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the worker started its pool");
        Worker { child, offset_file }
    }

    /// Moves the worker's wall clock to `offset` from the true time.
    fn set_offset(&self, offset: &str) {
        std::fs::write(&self.offset_file, offset).unwrap();
    }

    /// Shuts the worker down gracefully and returns its report line.
    fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let mut report = String::new();
        for line in BufReader::new(self.child.stdout.take().unwrap()).lines() {
            report.push_str(&line.unwrap());
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the worker exits cleanly");
        report
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A test that failed leaves no worker behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.offset_file.parent().unwrap());
    }
}

async fn storage() -> (TestDatabase, Arc<PgBackend>) {
    let db = test_database().await;
    let config = PgConfig {
        world: world_config(),
        ..PgConfig::default()
    };
    let backend = PgBackend::connect(db.url_as_app_user(), 4, config)
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    (db, Arc::new(backend))
}

/// Leads maintenance on storage's clock: rescues stale jobs and promotes
/// retries, as a healthy leader elsewhere in the cluster would.
fn lead(backend: &Arc<PgBackend>) -> tokio::task::JoinHandle<()> {
    let backend = Arc::clone(backend);
    tokio::spawn(async move {
        loop {
            let process = ProcessId(1_000);
            if let Ok(Ok(leader)) = backend.run(cmd::LeaderElect { process }).await {
                let _ = backend
                    .execute(Command::Rescue(cmd::Rescue {
                        leader,
                        draw: 0,
                        max: 100,
                    }))
                    .await;
                let _ = backend
                    .execute(Command::Promote(cmd::Promote { leader, max: 100 }))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn wait_for_state(
    client: &Client<PgBackend>,
    id: JobId,
    want: &[StateName],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let job = client.job(id).await.unwrap().unwrap();
        if want.contains(&job.state_name()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {:?} (attempt {}), not {want:?}, after {within:?}",
            job.state_name(),
            job.attempt.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_stepped_back_does_not_stop_heartbeats() {
    let (db, backend) = storage().await;
    let client = Client::new(Arc::clone(&backend));
    let leader = lead(&backend);
    let worker = Worker::start(&db, 1, "+0");
    let id = client.insert(&Sleep { ms: 4_000 }).await.unwrap().id;
    wait_for_state(&client, id, &[StateName::Running], Duration::from_secs(5)).await;
    // Two minutes back, far more than the 1.5 s staleness limit.
    worker.set_offset("-120");
    wait_for_state(
        &client,
        id,
        &[StateName::Completed, StateName::Failed],
        Duration::from_secs(12),
    )
    .await;
    leader.abort();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.state_name(), StateName::Completed);
    assert_eq!(
        job.attempt.0, 1,
        "heartbeats kept the first attempt alive: never rescued as stale"
    );
    let report = worker.stop();
    assert!(report.contains("\"fenced\": 0"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_ahead_of_storage_runs_the_budget_storage_set() {
    let (db, backend) = storage().await;
    let client = Client::new(Arc::clone(&backend));
    let leader = lead(&backend);
    // Ten seconds ahead of storage, with a 3 s budget per attempt.
    let worker = Worker::start(&db, 1, "+10");
    let options = InsertOptions {
        timeout: Some(Duration::from_secs(3)),
        ..InsertOptions::default()
    };
    let id = client
        .insert_with(&Sleep { ms: 500 }, options)
        .await
        .unwrap()
        .id;
    wait_for_state(
        &client,
        id,
        &[StateName::Completed, StateName::Failed],
        Duration::from_secs(10),
    )
    .await;
    leader.abort();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(
        job.state_name(),
        StateName::Completed,
        "{:?}",
        job.last_error()
    );
    assert_eq!(
        job.attempt.0, 1,
        "its 500 ms fit its 3 s budget the first time"
    );
    let report = worker.stop();
    assert!(report.contains("\"timeouts\": 0"), "{report}");
}
