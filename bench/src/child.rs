//! Worker processes: `--processes P` runs P real processes of this same
//! binary (`weir bench worker --spec JSON`, hidden) against one database,
//! the way a multi-replica deployment does.
//!
//! The protocol is lines. A child prints JSON [`Message`]s on stdout:
//! `Ready` once it is connected and set up, `Progress` every so often,
//! and `Done` with its figures when it has finished. The parent writes
//! `go` on the child's stdin to start every child at once, and closes
//! stdin to tell it to stop (a graceful shutdown).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// What a child runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WorkerSpec {
    /// A worker pool of `workers` no-op handlers, until stopped, with the
    /// default settings except for the `DispatcherConfig` fields in
    /// `overrides` (a JSON object).
    Pool {
        url: String,
        workers: u32,
        overrides: Option<Value>,
    },
    /// A producer: `mode` is `single` (one job per statement) or `batch`
    /// (128 per statement) for `seconds`, or `bulk` (`jobs` through COPY).
    Enqueue {
        url: String,
        mode: String,
        seconds: f64,
        jobs: u64,
    },
    /// One contender of the semaphore herd.
    Herd {
        url: String,
        herd: super::herd::HerdSpec,
    },
}

/// A line from a child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Set up; waiting for `go`.
    Ready,
    /// Handlers completed and started so far.
    Progress { completed: u64, started: u64 },
    /// Finished phase `n` of several; waiting for the next `go`.
    Phase(u32),
    /// Finished: the child's figures.
    Done(Value),
    /// Gave up.
    Failed(String),
}

/// Prints one message for the parent.
pub fn send(message: &Message) {
    let line = serde_json::to_string(message).expect("messages serialise");
    let mut out = std::io::stdout().lock();
    // A parent that went away: nothing left to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What the parent said on stdin.
pub struct Orders {
    /// How many `go` lines arrived.
    gos: tokio::sync::watch::Receiver<u32>,
    /// How many this side has waited for.
    taken: u32,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Orders {
    /// Reads stdin on a thread: `go` lines, then end of input (stop).
    pub fn listen() -> Orders {
        let (go_tx, go_rx) = tokio::sync::watch::channel(0u32);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "go" => go_tx.send_modify(|n| *n += 1),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = stop_tx.send(true);
        });
        Orders {
            gos: go_rx,
            taken: 0,
            stop: stop_rx,
        }
    }

    /// Until the next `go` (or stdin closed: then false).
    pub async fn go(&mut self) -> bool {
        self.taken += 1;
        let wanted = self.taken;
        self.gos.wait_for(|n| *n >= wanted).await.is_ok()
    }

    /// A future that completes when the parent closes stdin.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The parent's side: P children and their messages.
pub struct Children {
    kids: Vec<Kid>,
    rx: mpsc::UnboundedReceiver<(usize, Option<Message>)>,
    done: Vec<Option<Value>>,
}

impl Children {
    /// Starts one child per spec.
    pub fn spawn(specs: &[WorkerSpec]) -> Result<Children, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut kids = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let spec = serde_json::to_string(spec).expect("specs serialise");
            let mut child = Command::new(&exe)
                .args(["bench", "worker", "--spec", &spec])
                .env("WEIR_BENCH_POOLER", super::db::pooler().name())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting worker process {i}: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            let tail = Arc::new(Mutex::new(Vec::new()));
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    match serde_json::from_str::<Message>(&line) {
                        Ok(message) => {
                            let _ = tx.send((i, Some(message)));
                        }
                        Err(_) => eprintln!("worker {i}: {line}"),
                    }
                }
                let _ = tx.send((i, None));
            });
            let keep = Arc::clone(&tail);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut tail = keep.lock().unwrap_or_else(|p| p.into_inner());
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            });
            kids.push(Kid {
                stdin: child.stdin.take(),
                child,
                stderr: tail,
            });
        }
        let done = vec![None; kids.len()];
        Ok(Children { kids, rx, done })
    }

    fn failure(&self, i: usize, what: &str) -> String {
        let tail = self.kids[i]
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n");
        format!("worker process {i} {what}; its last output:\n{tail}")
    }

    /// Waits until every child is ready.
    pub async fn ready(&mut self) -> Result<(), String> {
        let mut ready = vec![false; self.kids.len()];
        while !ready.iter().all(|r| *r) {
            if let (i, Message::Ready) = self.next().await? {
                ready[i] = true;
            }
        }
        Ok(())
    }

    /// Waits until every child reported finishing phase `n`.
    pub async fn phase(&mut self, n: u32) -> Result<(), String> {
        let mut seen = vec![false; self.kids.len()];
        while !seen.iter().all(|s| *s) {
            if let (i, Message::Phase(m)) = self.next().await? {
                if m == n {
                    seen[i] = true;
                }
            }
        }
        Ok(())
    }

    /// Starts every child (or its next phase).
    pub fn go(&mut self) -> Result<(), String> {
        for (i, kid) in self.kids.iter_mut().enumerate() {
            let stdin = kid.stdin.as_mut().expect("not stopped yet");
            writeln!(stdin, "go")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("starting worker process {i}: {e}"))?;
        }
        Ok(())
    }

    /// Tells every child to stop.
    pub fn stop(&mut self) {
        for kid in &mut self.kids {
            kid.stdin = None;
        }
    }

    /// The next message from any child. A child that exits without
    /// reporting, or fails, is an error.
    pub async fn next(&mut self) -> Result<(usize, Message), String> {
        loop {
            let Some((i, message)) = self.rx.recv().await else {
                return Err("every worker process is gone".into());
            };
            match message {
                Some(Message::Done(value)) => {
                    self.done[i] = Some(value.clone());
                    return Ok((i, Message::Done(value)));
                }
                Some(Message::Failed(why)) => {
                    return Err(self.failure(i, &format!("failed: {why}")))
                }
                Some(message) => return Ok((i, message)),
                None if self.done[i].is_some() => continue,
                None => return Err(self.failure(i, "exited without reporting")),
            }
        }
    }

    /// Whether every child has reported `Done`.
    pub fn all_done(&self) -> bool {
        self.done.iter().all(Option::is_some)
    }

    /// Stops the children (if not yet), waits for every `Done` and for
    /// the processes to exit; the figures in child order.
    pub async fn finish(mut self) -> Result<Vec<Value>, String> {
        self.stop();
        while !self.all_done() {
            self.next().await?;
        }
        for kid in &mut self.kids {
            wait_exit(&mut kid.child).await;
        }
        let done = std::mem::take(&mut self.done);
        Ok(done.into_iter().map(|d| d.expect("all done")).collect())
    }
}

async fn wait_exit(child: &mut Child) {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Stuck after reporting: it owes nothing more.
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Children {
    fn drop(&mut self) {
        for kid in &mut self.kids {
            if let Ok(None) = kid.child.try_wait() {
                let _ = kid.child.kill();
                let _ = kid.child.wait();
            }
        }
    }
}
