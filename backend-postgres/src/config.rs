//! How a [`PgBackend`](crate::PgBackend)(crate::PgBackend) is set up: [`PgConfig`], what its
//! pool connects through ([`Pooler`]), and the configurations that cannot
//! work ([`ConfigError`]).

use weir_core::{InvalidClaimerConfig, WorldConfig};

use crate::schema::SchemaName;

/// How a [`PgBackend`](crate::PgBackend) is set up.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// The schema holding Weir's tables.
    pub schema: SchemaName,
    /// The decision settings; the same as the reference world's.
    pub world: WorldConfig,
    /// Send NOTIFY wake-ups when jobs become available and when a running
    /// job is cancelled. Off, workers find work by polling only.
    pub notify: bool,
    /// What the pool's connections go through: straight to Postgres (or a
    /// session-pooling PgBouncer), or a transaction-pooling PgBouncer.
    pub pooler: Pooler,
    /// Where the LISTEN connection of [`Backend::subscribe`](weir::Backend::subscribe) goes, when not
    /// where the pool goes: a URL of the Postgres server itself. Needed
    /// with [`Pooler::Transaction`] and `notify` on, since LISTEN needs a
    /// session of its own. `None`: the pool's connect options.
    pub listen_url: Option<String>,
}

impl Default for PgConfig {
    fn default() -> PgConfig {
        PgConfig {
            schema: SchemaName::default(),
            world: WorldConfig::default(),
            notify: true,
            pooler: Pooler::Direct,
            listen_url: None,
        }
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The listen URL may carry a password.
        let listen = self.listen_url.as_ref().map(|_| "<set>");
        f.debug_struct("PgConfig")
            .field("schema", &self.schema)
            .field("world", &self.world)
            .field("notify", &self.notify)
            .field("pooler", &self.pooler)
            .field("listen_url", &listen)
            .finish()
    }
}

/// What a [`PgBackend`](crate::PgBackend)'s pool connects through, which decides how
/// statements are sent (see the crate README's deployment notes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pooler {
    /// Straight to Postgres, or through PgBouncer in session pooling: each
    /// connection is one server session. Statements are prepared once per
    /// connection (sqlx's statement cache) and reused.
    #[default]
    Direct,
    /// Through PgBouncer in transaction pooling (tested with Debian's
    /// 1.18): between transactions a connection's statements may run on
    /// any server connection. Every statement with parameters is sent
    /// unnamed (never prepared by name) and inside a transaction, its own
    /// when the command has none. Session features are refused: the
    /// `AdvisorySemaphore` (use `LeaseSemaphore`), and LISTEN through the
    /// pool (set [`PgConfig::listen_url`] to the server itself, or
    /// `notify: false`).
    Transaction,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The claimer settings are invalid.
    #[error(transparent)]
    Claimer(#[from] InvalidClaimerConfig),
    /// The connection failed.
    #[error("connecting: {0}")]
    Connect(#[from] sqlx::Error),
}
