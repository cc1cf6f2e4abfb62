//! Handlers by kind, with the job's type erased.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use weir_core::{InvalidName, Kind, Payload};

use crate::job::{HandlerError, JobArgs, JobContext, JobOutcome};
use crate::limit::{Limit, Miss};

/// What running an erased handler came to.
#[derive(Debug)]
pub(crate) enum Ran {
    /// The handler ran (or the payload could not run at all) and decided.
    Decided(JobOutcome),
    /// A concurrency limit was full: hand the job back for this long
    /// without using an attempt.
    Limited(Duration),
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Ran, HandlerError>> + Send>>;
type ErasedHandler = Arc<dyn Fn(Payload, JobContext) -> HandlerFuture + Send + Sync>;

/// The handlers a worker pool can run, by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<Kind, ErasedHandler>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

/// Aborts a spawned task when dropped, so a handler task never outlives
/// the attempt it belongs to (a timeout drops the future awaiting it).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Registry {
    /// No handlers.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `handler` for `J::KIND`. A payload that does not decode as
    /// `J` fails the job for good (no retry can fix it) with the decode
    /// error as its message. When [`JobArgs::concurrency`] names a limit,
    /// the handler runs only while holding one of its slots.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> Result<&mut Registry, InvalidName>
    where
        J: JobArgs,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JobOutcome, HandlerError>> + Send + 'static,
    {
        let kind = Kind::new(J::KIND)?;
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |payload: Payload, ctx: JobContext| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let args = match serde_json::from_slice::<J>(&payload.0) {
                    Ok(args) => args,
                    Err(e) => {
                        return Ok(Ran::Decided(JobOutcome::Fail(format!(
                            "payload does not decode as {}: {e}",
                            J::KIND
                        ))))
                    }
                };
                let limit = match args.concurrency().map(|(name, n)| Limit::new(name, n)) {
                    None => None,
                    Some(Ok(limit)) => Some(limit),
                    Some(Err(e)) => {
                        return Ok(Ran::Decided(JobOutcome::Fail(format!(
                            "invalid concurrency limit: {e}"
                        ))))
                    }
                };
                if let Some(limit) = &limit {
                    match ctx.limiter.acquire(ctx.receipt, limit).await {
                        Ok(_) => {}
                        Err(Miss::Full(pause)) => return Ok(Ran::Limited(pause)),
                        Err(Miss::Refused(reject)) => {
                            return Ok(Ran::Decided(JobOutcome::Fail(format!(
                                "concurrency limit {} refused: {reject}",
                                limit.semaphore
                            ))))
                        }
                        Err(Miss::Backend(e)) => return Err(e.into()),
                    }
                }
                let (limiter, receipt, token) =
                    (Arc::clone(&ctx.limiter), ctx.receipt, ctx.cancelled.clone());
                // Its own task, so a panic is caught here as a join error
                // (and retried), whatever the handler held.
                let mut task = AbortOnDrop(tokio::spawn(handler(args, ctx)));
                let joined = if limiter.holds(receipt) {
                    limiter.renew_while(receipt, &token, &mut task.0).await
                } else {
                    (&mut task.0).await
                };
                match joined {
                    Ok(result) => result.map(Ran::Decided),
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Err(join) => Err(format!("handler task ended: {join}").into()),
                }
            })
        });
        self.handlers.insert(kind, erased);
        Ok(self)
    }

    /// The kinds registered, in order: a pool claims only these.
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.handlers.keys()
    }

    pub(crate) fn get(&self, kind: &Kind) -> Option<ErasedHandler> {
        self.handlers.get(kind).cloned()
    }
}
