//! Handlers by kind, with the job's type erased.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use weir_core::{InvalidName, Kind, Payload};

use crate::job::{HandlerError, JobArgs, JobContext, JobOutcome};

type HandlerFuture = Pin<Box<dyn Future<Output = Result<JobOutcome, HandlerError>> + Send>>;
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

impl Registry {
    /// No handlers.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `handler` for `J::KIND`. A payload that does not decode as
    /// `J` fails the job for good (no retry can fix it) with the decode
    /// error as its message.
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
                match serde_json::from_slice::<J>(&payload.0) {
                    Ok(args) => handler(args, ctx).await,
                    Err(e) => Ok(JobOutcome::Fail(format!(
                        "payload does not decode as {}: {e}",
                        J::KIND
                    ))),
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
