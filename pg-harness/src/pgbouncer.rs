//! A throwaway PgBouncer in front of the harness's server, for tests that
//! must go through a real connection pooler.
//!
//! [`pgbouncer`] starts one for a [`TestDatabase`]'s server, in the pool
//! mode and with the server-side pool size the test asks for, and
//! [`PgBouncer::app_url`] is that database through it. It listens only on
//! `127.0.0.1`, at a free port (never Debian's default 6432, so a system
//! `pgbouncer` service started by the package does not matter), with its
//! own configuration in a fresh directory `weir-pgbouncer-<pid>-<n>` under
//! the temporary directory: `auth_type = trust` (clients are not asked for
//! a password; the user must be in the directory's `userlist.txt`, which
//! also holds the passwords PgBouncer logs in to the server with),
//! `ignore_startup_parameters = extra_float_digits` (sqlx sends it; see
//! the crate README's deployment notes), `query_wait_timeout = 20` (a
//! test that starves for a server connection fails in seconds, not two
//! minutes).
//!
//! The binary is `PGBOUNCER` if set, else `pgbouncer` on `PATH`, else
//! `/usr/sbin/pgbouncer` (where Debian puts it). If there is none,
//! [`pgbouncer`] panics saying how to install it (`apt-get install
//! pgbouncer`); a test never skips silently.
//!
//! PgBouncer refuses to run as root: as root the harness starts it with
//! `user = <the server's OS user>` in its configuration, so it drops to
//! that user itself (the directory belongs to that user). A watchdog shell
//! in its own process group, like the cluster's, stops it and removes the
//! directory when the [`PgBouncer`] is dropped or this process ends however
//! it ends.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use url::Url;

use super::{
    base_dir, free_port, read_from, redact, tail, which, HarnessError, RunAs, TestDatabase,
    APP_PASSWORD, APP_ROLE, START_ATTEMPTS,
};

/// Prefix of throwaway PgBouncer directories.
const DIR_PREFIX: &str = "weir-pgbouncer-";
/// How long PgBouncer may take to say it is up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// A server connection is a client's from its login to its logout.
    Session,
    /// A server connection is a client's for one transaction (or one
    /// statement outside a transaction), then goes back to the pool.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running throwaway PgBouncer; stopped (and its directory removed) when
/// dropped.
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    mode: PoolMode,
    pool_size: u32,
    version: String,
    app_url: String,
    superuser_url: String,
    watchdog: Option<Child>,
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncer")
            .field("version", &self.version)
            .field("port", &self.port)
            .field("mode", &self.mode)
            .field("pool_size", &self.pool_size)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Starts a PgBouncer in `mode` in front of `db`'s server, with at most
/// `pool_size` server connections per database and user. Panics (with
/// install instructions) when PgBouncer is not installed or cannot start.
pub async fn pgbouncer(db: &TestDatabase, mode: PoolMode, pool_size: u32) -> PgBouncer {
    let (url, app_url) = (db.url().to_owned(), db.url_as_app_user().to_owned());
    let started =
        tokio::task::spawn_blocking(move || PgBouncer::try_start(&url, &app_url, mode, pool_size))
            .await;
    match started {
        Ok(Ok(bouncer)) => bouncer,
        Ok(Err(error)) => panic!("{error}"),
        Err(error) => panic!("weir harness: starting PgBouncer failed: {error}"),
    }
}

impl PgBouncer {
    /// Starts a PgBouncer in front of the server of `url` (a superuser URL
    /// of the database) and `app_url` (the same database as [`APP_ROLE`]).
    pub fn try_start(
        url: &str,
        app_url: &str,
        mode: PoolMode,
        pool_size: u32,
    ) -> Result<PgBouncer, HarnessError> {
        let binary = find_binary()?;
        let version = version(&binary)?;
        let run_as = RunAs::detect()?;
        let server = Server::of(url)?;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = create_dir(run_as.as_ref())?;
            let port = free_port()?;
            let conf = Conf {
                server: &server,
                port,
                mode,
                pool_size,
                run_as: run_as.as_ref(),
            };
            conf.write(&dir)?;
            let watchdog = spawn(&binary, &dir)?;
            let mut bouncer = PgBouncer {
                port,
                dir: dir.clone(),
                mode,
                pool_size,
                version: version.clone(),
                app_url: at_port(app_url, port)?,
                superuser_url: at_port(url, port)?,
                watchdog: Some(watchdog),
            };
            match bouncer.wait_up() {
                Ok(()) => {
                    eprintln!(
                        "weir harness: throwaway {version} ({} pooling, pool size {pool_size}) on \
                         127.0.0.1:{port} in front of {}",
                        mode.as_str(),
                        server.describe(),
                    );
                    return Ok(bouncer);
                }
                Err(message) => {
                    bouncer.stop();
                    failures.push(message);
                }
            }
        }
        Err(HarnessError::new(format!(
            "weir harness: could not start PgBouncer after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        )))
    }

    /// URL of the database through PgBouncer, as [`APP_ROLE`].
    pub fn app_url(&self) -> &str {
        &self.app_url
    }

    /// URL of the database through PgBouncer, as the superuser.
    pub fn superuser_url(&self) -> &str {
        &self.superuser_url
    }

    /// The TCP port it listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pool mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Its server-side pool size.
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// What `pgbouncer --version` says first (e.g. `PgBouncer 1.18.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read_from(&self.dir.join("pgbouncer.log"), 0)
    }

    /// Waits until the log says the process is up; the log's tail when it
    /// failed instead.
    fn wait_up(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains("process up") {
                return Ok(());
            }
            if log.contains("FATAL") || Instant::now() > deadline {
                return Err(format!(
                    "PgBouncer on port {} did not start:\n{}",
                    self.port,
                    tail(&log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops PgBouncer and removes its directory; idempotent.
    fn stop(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where PgBouncer connects: the server of the harness's URL.
struct Server {
    host: String,
    port: u16,
    users: Vec<(String, String)>,
}

impl Server {
    fn of(url: &str) -> Result<Server, HarnessError> {
        let parsed = Url::parse(url).map_err(|e| {
            HarnessError::new(format!("weir harness: {} is not a URL: {e}", redact(url)))
        })?;
        let query = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let host = match parsed.host_str().filter(|h| !h.is_empty()) {
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            None => query("host").unwrap_or_else(|| "/var/run/postgresql".to_owned()),
        };
        let port = parsed
            .port()
            .or_else(|| query("port").and_then(|p| p.parse().ok()))
            .unwrap_or(5432);
        let superuser = match parsed.username() {
            "" => query("user").unwrap_or_else(|| super::SUPERUSER.to_owned()),
            user => user.to_owned(),
        };
        let password = parsed
            .password()
            .map(str::to_owned)
            .or_else(|| query("password"))
            .unwrap_or_default();
        Ok(Server {
            host,
            port,
            users: vec![
                (superuser, password),
                (APP_ROLE.to_owned(), APP_PASSWORD.to_owned()),
            ],
        })
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One PgBouncer configuration.
struct Conf<'a> {
    server: &'a Server,
    port: u16,
    mode: PoolMode,
    pool_size: u32,
    run_as: Option<&'a RunAs>,
}

impl Conf<'_> {
    fn write(&self, dir: &Path) -> Result<(), HarnessError> {
        let quote = |s: &str| s.replace('"', "\"\"");
        let users: String = self
            .server
            .users
            .iter()
            .map(|(user, password)| format!("\"{}\" \"{}\"\n", quote(user), quote(password)))
            .collect();
        let user_line = self
            .run_as
            .map(|r| format!("user = {}\n", r.user))
            .unwrap_or_default();
        let dir_text = dir.to_string_lossy();
        let ini = format!(
            "; Written by weir_pg_harness: a throwaway PgBouncer for tests.\n\
             [databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir_text}/userlist.txt\n\
             pool_mode = {mode}\n\
             default_pool_size = {pool_size}\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 1000\n\
             ignore_startup_parameters = extra_float_digits\n\
             query_wait_timeout = 20\n\
             logfile = {dir_text}/pgbouncer.log\n\
             pidfile = {dir_text}/pgbouncer.pid\n\
             {user_line}",
            host = self.server.host,
            server_port = self.server.port,
            port = self.port,
            mode = self.mode.as_str(),
            pool_size = self.pool_size,
        );
        for (name, text) in [("userlist.txt", users), ("pgbouncer.ini", ini)] {
            let path = dir.join(name);
            fs::File::create(&path)
                .and_then(|mut file| file.write_all(text.as_bytes()))
                .map_err(|e| {
                    HarnessError::new(format!(
                        "weir harness: cannot write {}: {e}",
                        path.display()
                    ))
                })?;
            chown(&path, self.run_as)?;
        }
        Ok(())
    }
}

/// The watchdog: starts PgBouncer, waits for its stdin to close, then stops
/// PgBouncer and removes the directory. `$1` is the directory, the rest
/// the command line.
const WATCHDOG_SCRIPT: &str = r#"trap '' HUP INT
dir=$1; shift
"$@" >/dev/null 2>&1 &
pid=$!
cat >/dev/null 2>&1
kill -TERM "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf -- "$dir"
"#;

fn spawn(binary: &Path, dir: &Path) -> Result<Child, HarnessError> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("weir-pgbouncer-watchdog")
        .arg(dir)
        .arg(binary)
        .arg(dir.join("pgbouncer.ini"))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C meant for the tests must not
        // kill the one process that cleans up after them.
        .process_group(0)
        .spawn()
        .map_err(|e| HarnessError::new(format!("weir harness: cannot start PgBouncer: {e}")))
}

fn create_dir(run_as: Option<&RunAs>) -> Result<PathBuf, HarnessError> {
    let base = base_dir(run_as.is_some());
    loop {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                chown(&dir, run_as)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(HarnessError::new(format!(
                    "weir harness: cannot create {}: {e}",
                    dir.display()
                )))
            }
        }
    }
}

fn chown(path: &Path, run_as: Option<&RunAs>) -> Result<(), HarnessError> {
    let Some(run_as) = run_as else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid)).map_err(|e| {
        HarnessError::new(format!(
            "weir harness: cannot chown {} to {}: {e}",
            path.display(),
            run_as.user
        ))
    })
}

/// `url` with its host and port replaced by PgBouncer's.
fn at_port(url: &str, port: u16) -> Result<String, HarnessError> {
    let mut parsed = Url::parse(url).map_err(|e| {
        HarnessError::new(format!("weir harness: {} is not a URL: {e}", redact(url)))
    })?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "host" && key != "port")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let moved = parsed.set_host(Some("127.0.0.1")).is_ok() && parsed.set_port(Some(port)).is_ok();
    if !moved {
        return Err(HarnessError::new(format!(
            "weir harness: cannot point {} at PgBouncer",
            redact(url)
        )));
    }
    Ok(parsed.into())
}

fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("PGBOUNCER").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(HarnessError::new(format!(
            "weir harness: PGBOUNCER is {} but there is no such file. Point it at the pgbouncer \
             binary, or unset it.",
            path.display()
        )));
    }
    let found = which("pgbouncer").or_else(|| {
        [
            "/usr/sbin/pgbouncer",
            "/usr/bin/pgbouncer",
            "/usr/local/bin/pgbouncer",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
    });
    found.ok_or_else(|| {
        HarnessError::new(
            "weir harness: these tests go through a real PgBouncer, and no pgbouncer binary was \
             found (PGBOUNCER: not set; PATH; /usr/sbin, /usr/bin, /usr/local/bin).\n\
             Install it, for example:\n  \
             - Debian/Ubuntu: apt-get install pgbouncer (the harness starts its own on a free \
             port; the package's system service on port 6432 is not used)\n  \
             - Fedora/RHEL: dnf install pgbouncer\n  \
             - macOS: brew install pgbouncer\n\
             or set PGBOUNCER to the path of the binary.",
        )
    })
}

fn version(binary: &Path) -> Result<String, HarnessError> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            HarnessError::new(format!(
                "weir harness: cannot run {}: {e}",
                binary.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .next()
        .unwrap_or("PgBouncer (unknown version)")
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_move_to_the_bouncer_and_servers_are_read_from_urls() {
        assert_eq!(
            at_port("postgres://weir_app:weir_app@127.0.0.1:5999/db", 7000).unwrap(),
            "postgres://weir_app:weir_app@127.0.0.1:7000/db"
        );
        let server = Server::of("postgres://admin:pw@db.example:5433/main").unwrap();
        assert_eq!((server.host.as_str(), server.port), ("db.example", 5433));
        assert_eq!(server.users[0], ("admin".to_owned(), "pw".to_owned()));
        let socket = Server::of("postgres:///main?host=/run/postgresql&user=u").unwrap();
        assert_eq!(
            (socket.host.as_str(), socket.port),
            ("/run/postgresql", 5432)
        );
        assert_eq!(socket.users[0].0, "u");
    }
}
