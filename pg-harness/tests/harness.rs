//! Tests of the harness (`weir_pg_harness`) against a real server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use weir_pg_harness::{self as harness, test_database, APP_ROLE};

/// Serialises the tests that start clusters in child processes.
static CHILDREN: Mutex<()> = Mutex::new(());

#[tokio::test]
async fn connects_and_reports_version() {
    let db = test_database().await;
    let pool = db.pool().await;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(version.starts_with("PostgreSQL "), "{version}");
    let current: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, db.name());
    assert!(db.name().starts_with("weir_test_"), "{}", db.name());
    eprintln!(
        "{version} (server_version_num {})",
        db.cluster().server_version_num()
    );
}

#[tokio::test]
async fn parallel_databases_are_isolated() {
    let (a, b) = tokio::join!(test_database(), test_database());
    assert_ne!(a.name(), b.name());
    let (pool_a, pool_b) = tokio::join!(a.app_pool(), b.app_pool());

    // The same table name in both, created concurrently.
    let create = "CREATE TABLE jobs (id bigint PRIMARY KEY, payload text NOT NULL)";
    let (ra, rb) = tokio::join!(
        sqlx::query(create).execute(&pool_a),
        sqlx::query(create).execute(&pool_b)
    );
    ra.unwrap();
    rb.unwrap();
    sqlx::query("INSERT INTO jobs VALUES (1, 'in a'), (2, 'also in a')")
        .execute(&pool_a)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs VALUES (1, 'in b')")
        .execute(&pool_b)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE only_in_a (x int)")
        .execute(&pool_a)
        .await
        .unwrap();

    let rows_a: Vec<String> = sqlx::query_scalar("SELECT payload FROM jobs ORDER BY id")
        .fetch_all(&pool_a)
        .await
        .unwrap();
    let rows_b: Vec<String> = sqlx::query_scalar("SELECT payload FROM jobs ORDER BY id")
        .fetch_all(&pool_b)
        .await
        .unwrap();
    assert_eq!(rows_a, ["in a", "also in a"]);
    assert_eq!(rows_b, ["in b"]);

    let in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&pool_b)
        .await
        .unwrap();
    assert_eq!(in_b, None);
    let in_a: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&pool_a)
        .await
        .unwrap();
    assert_eq!(in_a.as_deref(), Some("only_in_a"));
}

#[tokio::test]
async fn app_role_is_not_a_superuser() {
    let db = test_database().await;
    assert!(db.url_as_app_user().contains(APP_ROLE));
    let pool = db.app_pool().await;

    let row = sqlx::query(
        "SELECT current_user::text AS who, rolsuper, rolcreaterole, rolcreatedb \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("who"), APP_ROLE);
    assert!(!row.get::<bool, _>("rolsuper"));
    assert!(!row.get::<bool, _>("rolcreaterole"));
    assert!(!row.get::<bool, _>("rolcreatedb"));

    // It owns its database, so it can create schemas and tables in it...
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owner, APP_ROLE);
    sqlx::query("CREATE SCHEMA weir")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE weir.t (x int)")
        .execute(&pool)
        .await
        .unwrap();

    // ...but superuser-only things are refused.
    let error = sqlx::query("CREATE ROLE not_allowed")
        .execute(&pool)
        .await
        .unwrap_err();
    let code = error.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("42501"), "{error}"); // insufficient_privilege
}

#[tokio::test]
async fn dropping_a_test_database_removes_it() {
    let db = test_database().await;
    let name = db.name().to_owned();
    // An open connection must not stop the drop.
    let pool = db.pool().await;
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();

    drop(db);

    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(harness::cluster().url())
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!exists, "{name} still exists");
}

#[test]
fn cluster_is_shared_by_the_process() {
    let first = harness::cluster() as *const _;
    let second = harness::cluster() as *const _;
    assert_eq!(first, second);
}

#[test]
fn throwaway_cluster_is_set_up_for_tests() {
    let cluster = harness::cluster();
    if !cluster.is_throwaway() {
        eprintln!("DATABASE_URL is set: no throwaway cluster to inspect");
        return;
    }
    let socket_dir = cluster.socket_dir().unwrap();
    let port = cluster.port().unwrap();
    assert!(socket_dir.join(format!(".s.PGSQL.{port}")).exists());
    assert!(cluster.log_file().unwrap().exists());

    let data_dir = cluster.data_dir().unwrap();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data_dir).unwrap());
    assert_ne!(owner, 0, "the data directory must not belong to root");

    // Over the unix socket, with the settings the harness promises.
    let socket_url = format!(
        "postgres://postgres@localhost:{port}/postgres?host={}",
        socket_dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&socket_url)
            .await
            .unwrap();
        for (setting, expected) in [
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "200"),
            ("listen_addresses", "127.0.0.1"),
            ("server_encoding", "UTF8"),
            ("TimeZone", "UTC"),
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(value, expected, "{setting}");
        }
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(superuser);
    });
}

/// Starts the same test binary running `child_process_starts_a_cluster`,
/// lets it end normally or abort, and checks its server and directory are
/// gone afterwards.
#[test]
fn server_is_stopped_when_the_process_ends() {
    let _serial = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        eprintln!("DATABASE_URL is set: children would not start a throwaway cluster");
        return;
    }
    for (mode, limit) in [
        // atexit: gone by the time the process has exited.
        ("exit", Duration::from_millis(500)),
        // No atexit: the watchdog notices and cleans up.
        ("abort", Duration::from_secs(15)),
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_process_starts_a_cluster",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WEIR_HARNESS_CHILD", mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("WEIR_HARNESS_CHILD ").map(|(_, rest)| rest))
            .unwrap_or_else(|| {
                panic!(
                    "child ({mode}) printed no cluster: {}\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (dir, pid) = line.split_once(' ').unwrap();
        let (dir, pid) = (Path::new(dir), pid.parse::<u32>().unwrap());
        assert_eq!(
            out.status.success(),
            mode == "exit",
            "{mode}: {}",
            out.status
        );

        let started = Instant::now();
        while (alive(pid) || dir.exists()) && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "{mode}: postmaster {pid} still running");
        assert!(!dir.exists(), "{mode}: {} still exists", dir.display());
        eprintln!(
            "{mode}: server and directory gone {:?} after the child exited",
            started.elapsed()
        );
    }
}

#[test]
#[ignore = "run as a child process by server_is_stopped_when_the_process_ends"]
fn child_process_starts_a_cluster() {
    let Ok(mode) = std::env::var("WEIR_HARNESS_CHILD") else {
        return;
    };
    let cluster = harness::cluster();
    let data_dir = cluster.data_dir().expect("a throwaway cluster");
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim();
    assert!(alive(pid.parse().unwrap()));
    println!(
        "WEIR_HARNESS_CHILD {} {pid}",
        cluster.socket_dir().unwrap().display()
    );
    match mode.as_str() {
        "abort" => std::process::abort(),
        "hang" => std::thread::sleep(Duration::from_secs(120)),
        _ => {}
    }
}

/// A process killed together with its watchdog leaves a running server and
/// its directory behind; the next cluster start sweeps them away.
#[test]
fn leftovers_of_killed_processes_are_swept() {
    let _serial = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        eprintln!("DATABASE_URL is set: children would not start a throwaway cluster");
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_starts_a_cluster",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEIR_HARNESS_CHILD", "hang")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let (dir, pid) = loop {
        line.clear();
        assert_ne!(
            stdout.read_line(&mut line).unwrap(),
            0,
            "child printed no cluster"
        );
        if let Some((_, rest)) = line.trim().split_once("WEIR_HARNESS_CHILD ") {
            let (dir, pid) = rest.split_once(' ').unwrap();
            break (PathBuf::from(dir), pid.parse::<u32>().unwrap());
        }
    };
    // Kill the watchdog first, then the process: nothing cleans up.
    let watchdog = children(child.id())
        .into_iter()
        .find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("weir-pg-watchdog"))
        })
        .expect("the child has a watchdog");
    assert!(Command::new("kill")
        .args(["-KILL", &watchdog.to_string()])
        .status()
        .unwrap()
        .success());
    child.kill().unwrap();
    child.wait().unwrap();
    // (Another process starting a cluster right now may already sweep it.)
    eprintln!(
        "after the kill: server alive {}, directory exists {}",
        alive(pid),
        dir.exists()
    );

    // Any later cluster start (here: another child's) sweeps them.
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_starts_a_cluster", "--exact", "--ignored"])
        .env("WEIR_HARNESS_CHILD", "exit")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    while alive(pid) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "stale server {pid} still running");
    assert!(!dir.exists(), "stale {} still exists", dir.display());
}

/// Child process ids of `pid` (all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
