//! Handlers by kind, with the job's type erased.
//!
//! A handler runs in two steps, so that the core decides everything in
//! between: *prepare* decodes the payload and reads the job's own limits
//! ([`JobArgs::concurrency`]) when the dispatcher asks, and *run* calls
//! the user's handler with the decoded arguments once the dispatcher has
//! taken the limits' slots.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use weir_core::{InvalidName, Kind, Limit, Payload, Unrunnable};

use crate::job::{HandlerError, JobArgs, JobContext, JobOutcome};

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<JobOutcome, HandlerError>> + Send>>;

/// A job's decoded arguments, waiting for its handler to start.
pub(crate) type Args = Box<dyn Any + Send>;

type Prepare = Arc<dyn Fn(&Payload) -> Result<(Args, Vec<Limit>), Unrunnable> + Send + Sync>;
type Run = Arc<dyn Fn(Args, JobContext) -> HandlerFuture + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) prepare: Prepare,
    pub(crate) run: Run,
}

/// The handlers a worker pool can run, by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<Kind, Handler>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
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
    /// the handler runs only while holding one of its slots; an invalid
    /// limit fails the job for good with the reason.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> Result<&mut Registry, InvalidName>
    where
        J: JobArgs,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JobOutcome, HandlerError>> + Send + 'static,
    {
        let kind = Kind::new(J::KIND)?;
        let prepare: Prepare = Arc::new(|payload: &Payload| {
            let args = serde_json::from_slice::<J>(&payload.0).map_err(|e| {
                Unrunnable::Invalid(format!("payload does not decode as {}: {e}", J::KIND))
            })?;
            let limits = match args.concurrency() {
                None => Vec::new(),
                Some((name, permits)) => vec![Limit::new(name, permits)
                    .map_err(|e| Unrunnable::Invalid(format!("invalid concurrency limit: {e}")))?],
            };
            Ok((Box::new(args) as Args, limits))
        });
        let handler = Arc::new(handler);
        let run: Run = Arc::new(move |args: Args, ctx: JobContext| {
            let args = *args
                .downcast::<J>()
                .expect("prepared by this handler's own prepare");
            Box::pin(handler(args, ctx))
        });
        self.handlers.insert(kind, Handler { prepare, run });
        Ok(self)
    }

    /// The kinds registered, in order: a pool claims only these.
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.handlers.keys()
    }

    pub(crate) fn get(&self, kind: &Kind) -> Option<&Handler> {
        self.handlers.get(kind)
    }
}
