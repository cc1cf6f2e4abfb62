//! LISTEN/NOTIFY wake-ups, with a polling fallback.
//!
//! The backend sends, on the channel `weir_<schema>` (only when
//! [`PgConfig::notify`](crate::PgConfig::notify) is on):
//!
//! * `j:<queue>` when jobs of `queue` became available (enqueue, promote,
//!   snooze, resume, admin retry, resuming a paused queue);
//! * `c:<job>:<epoch>:<holder>` when a running job was taken away from its
//!   holder (cancel, rescue): the holder checks at once (a heartbeat of
//!   that attempt) instead of at its next heartbeat round, and stops the
//!   handler when storage refuses it. Any role that can connect can send
//!   such a message, so it is a hint, never the word that stops a handler;
//!   the epoch bump fences the attempt either way.
//!
//! Notifications are hints. They are lost while the listening connection
//! is down, so [`Listener::wait`] also returns after a polling interval and
//! reports [`Wakeup::Missed`] after a reconnection; a worker then polls its
//! queues. New work is thus picked up within milliseconds when NOTIFY works,
//! and within the polling interval when it does not, without hot polling.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};
use weir::{BackendError, Subscription};
use weir_core::{Epoch, JobId, ProcessId, QueueName};

use crate::config::{PgConfig, Pooler};
use crate::error::db;

/// What a notification says: the runtime's own wake-up type, so a
/// [`Listener`] is a [`weir::Subscription`] as it stands.
pub use weir::Wakeup;

/// Parses a payload; `None` for one this version does not know.
pub fn parse(payload: &str) -> Option<Wakeup> {
    if let Some(queue) = payload.strip_prefix("j:") {
        return QueueName::new(queue).ok().map(Wakeup::Jobs);
    }
    let rest = payload.strip_prefix("c:")?;
    let mut parts = rest.split(':');
    let job = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    let holder = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Wakeup::Cancelled {
        job: JobId(job),
        epoch: Epoch(epoch),
        holder: ProcessId(holder),
    })
}

/// A dedicated connection listening on the backend's channel.
pub struct Listener {
    listener: PgListener,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// Opens a connection and listens: to
    /// [`PgConfig::listen_url`](crate::PgConfig::listen_url) when it is
    /// set, else with `pool`'s options. Behind a transaction
    /// pooler ([`Pooler::Transaction`]) without a `listen_url` it is
    /// refused ([`BackendError::Misconfigured`]): the LISTEN would be
    /// registered on a server connection that other clients share and that
    /// this one does not keep, so wake-ups would be lost or go to others.
    /// [`PgBackend::listener`](crate::PgBackend::listener) opens one for a
    /// backend.
    pub async fn connect(pool: &PgPool, config: &PgConfig) -> Result<Listener, BackendError> {
        let listener = match (&config.listen_url, config.pooler) {
            (Some(url), _) => PgListener::connect(url).await,
            (None, Pooler::Direct) => PgListener::connect_with(pool).await,
            (None, Pooler::Transaction) => {
                return Err(BackendError::Misconfigured(
                    "LISTEN needs a session of its own, which a transaction-pooling PgBouncer \
                     (Pooler::Transaction) does not keep: set PgConfig::listen_url to the \
                     Postgres server itself, or notify: false to poll only"
                        .to_string(),
                ))
            }
        };
        let mut listener = listener.map_err(db)?;
        listener
            .listen(&config.schema.channel())
            .await
            .map_err(db)?;
        Ok(Listener { listener })
    }

    /// The next wake-up, or `None` when `poll_interval` passed without one
    /// (the polling fallback: look for work anyway).
    pub async fn wait(&mut self, poll_interval: Duration) -> Result<Option<Wakeup>, BackendError> {
        let deadline = tokio::time::Instant::now() + poll_interval;
        loop {
            let next = tokio::time::timeout_at(deadline, self.listener.try_recv()).await;
            match next {
                Err(_elapsed) => return Ok(None),
                // The connection dropped; sqlx reconnects on the next call.
                Ok(Ok(None)) => return Ok(Some(Wakeup::Missed)),
                Ok(Ok(Some(notification))) => {
                    if let Some(wakeup) = parse(notification.payload()) {
                        return Ok(Some(wakeup));
                    }
                }
                Ok(Err(error)) => return Err(db(error)),
            }
        }
    }
}

/// What [`PgBackend`](crate::PgBackend)'s [`weir::Backend::subscribe`] hands out.
#[async_trait]
impl Subscription for Listener {
    async fn next(&mut self, within: Duration) -> Result<Option<Wakeup>, BackendError> {
        self.wait(within).await
    }
}

/// How long [`Listener::wait`] should wait when idle, by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_ignored() {
        assert_eq!(
            parse("j:emails"),
            Some(Wakeup::Jobs(QueueName::new("emails").unwrap()))
        );
        assert_eq!(
            parse("c:7:3:42"),
            Some(Wakeup::Cancelled {
                job: JobId(7),
                epoch: Epoch(3),
                holder: ProcessId(42)
            })
        );
        for junk in ["", "j:", "j:BAD", "c:1:2", "c:1:2:3:4", "x:1"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }
}
