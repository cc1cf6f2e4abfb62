//! Statements as the connection mode needs them: [`PgBackend::via`] wraps
//! the pool or a connection in an executor that, with
//! [`Pooler::Transaction`], sends every statement unnamed and inside a
//! transaction; with [`Pooler::Direct`] it hands the statement on
//! unchanged.
//!
//! # Why both
//!
//! Behind a transaction-pooling PgBouncer (1.18, Debian's) a client keeps
//! a server connection only until the server is idle outside a
//! transaction; then the next statement may run on another one, which
//! other clients used before. sqlx 0.8 runs a statement with parameters in
//! two round trips, each ending in `Sync`: `Parse` (and `Describe`), then
//! `Bind` and `Execute`. So:
//!
//! * A *named* statement (`sqlx_s_N`, what sqlx prepares for a persistent
//!   query, cached or not: with the cache off it is never closed either)
//!   stays on the server connection it was parsed on, and every client
//!   numbers its statements from 1: the next client on that server
//!   connection fails with `prepared statement "sqlx_s_1" already exists`,
//!   or its `Bind` finds no such statement on another server connection.
//! * An *unnamed* statement (`persistent(false)`) lives until the next
//!   `Parse` on its server connection, but outside a transaction the
//!   `Bind` may be sent to another server connection than the `Parse`,
//!   where it would bind another client's unnamed statement.
//!
//! Inside an explicit transaction PgBouncer keeps the client on one server
//! connection from `BEGIN` to `COMMIT`, so an unnamed statement's two round
//! trips meet on it. Statements a command already runs in a transaction
//! only become unnamed; one outside any gets a `BEGIN` and a `COMMIT` of
//! its own (which also makes it atomic, as autocommit did). The cost, per
//! statement that was one round trip: a `Parse` round trip and no reuse of
//! a prepared plan, plus `BEGIN` and `COMMIT` when it ran alone.
//!
//! Statements without parameters sent through the simple query protocol
//! (`raw_sql`, `COPY`) are one message and need neither.

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgQueryResult, PgRow, PgStatement};
use sqlx::{Connection, Describe, Either, Execute, Executor, Postgres};

use crate::backend::PgBackend;
use crate::config::Pooler;

/// A statement sent unnamed: prepared as the unnamed statement, never
/// cached, whatever the query asked for.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Where a routed statement runs: the pool or one connection.
pub(crate) trait Route<'c> {
    /// The executor that runs it as `pooler` needs.
    type Via: Executor<'c, Database = Postgres>;

    /// Wraps `self` for `pooler`.
    fn route(self, pooler: Pooler) -> Self::Via;
}

impl<'c> Route<'c> for &'c PgPool {
    type Via = ViaPool<'c>;

    fn route(self, pooler: Pooler) -> ViaPool<'c> {
        ViaPool { pool: self, pooler }
    }
}

impl<'c> Route<'c> for &'c mut PgConnection {
    type Via = ViaConn<'c>;

    fn route(self, pooler: Pooler) -> ViaConn<'c> {
        ViaConn { conn: self, pooler }
    }
}

impl PgBackend {
    /// `executor` (the pool, or a connection in a transaction or not) as
    /// the backend's [`Pooler`] needs it. Every statement with parameters
    /// goes through this.
    pub(crate) fn via<'c, R: Route<'c>>(&self, executor: R) -> R::Via {
        executor.route(self.inner.config.pooler)
    }
}

/// The pool, through [`PgBackend::via`].
pub(crate) struct ViaPool<'p> {
    pool: &'p PgPool,
    pooler: Pooler,
}

/// One connection, through [`PgBackend::via`].
pub(crate) struct ViaConn<'c> {
    conn: &'c mut PgConnection,
    pooler: Pooler,
}

impl std::fmt::Debug for ViaPool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViaPool")
            .field("pooler", &self.pooler)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ViaConn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViaConn")
            .field("pooler", &self.pooler)
            .finish_non_exhaustive()
    }
}

type Item = Either<PgQueryResult, PgRow>;

/// Runs `query` unnamed in a transaction of its own on `conn`, collecting
/// its results before the `COMMIT` (statements here return bounded sets).
async fn alone<'q, E>(conn: &mut PgConnection, query: E) -> Result<Vec<Item>, sqlx::Error>
where
    E: 'q + Execute<'q, Postgres>,
{
    let mut tx = conn.begin().await?;
    let items: Vec<Item> = (&mut *tx).fetch_many(Unnamed(query)).try_collect().await?;
    tx.commit().await?;
    Ok(items)
}

/// [`alone`] on a connection from `pool`.
async fn alone_on_pool<'q, E>(pool: &PgPool, query: E) -> Result<Vec<Item>, sqlx::Error>
where
    E: 'q + Execute<'q, Postgres>,
{
    let mut conn = pool.acquire().await?;
    alone(&mut conn, query).await
}

fn stream_of<'e>(
    items: impl std::future::Future<Output = Result<Vec<Item>, sqlx::Error>> + Send + 'e,
) -> BoxStream<'e, Result<Item, sqlx::Error>> {
    futures_util::stream::once(items)
        .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

fn first_row(items: Vec<Item>) -> Option<PgRow> {
    items.into_iter().find_map(|item| item.right())
}

impl<'p> Executor<'p> for ViaPool<'p> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Item, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.pool.fetch_many(query),
            Pooler::Transaction => stream_of(alone_on_pool(self.pool, query)),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.pool.fetch_optional(query),
            Pooler::Transaction => alone_on_pool(self.pool, query)
                .map(|items| items.map(first_row))
                .boxed(),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for ViaConn<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Item, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.conn.fetch_many(query),
            Pooler::Transaction if self.conn.is_in_transaction() => {
                self.conn.fetch_many(Unnamed(query))
            }
            Pooler::Transaction => stream_of(alone(self.conn, query)),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.conn.fetch_optional(query),
            Pooler::Transaction if self.conn.is_in_transaction() => {
                self.conn.fetch_optional(Unnamed(query))
            }
            Pooler::Transaction => alone(self.conn, query)
                .map(|items| items.map(first_row))
                .boxed(),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.describe(sql)
    }
}
