//! What a driver error means for the command that met it.

use weir::BackendError;

/// Maps a driver error to what the caller may assume about the command.
pub(crate) fn db(error: sqlx::Error) -> BackendError {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            BackendError::Unavailable(error.to_string())
        }
        sqlx::Error::Database(e) => match e.code().as_deref() {
            // insufficient_privilege, undefined_table, undefined_function,
            // invalid_schema_name, undefined_column: the schema is missing,
            // old, or the role lacks a grant. Retrying will not help.
            Some("42501" | "42P01" | "42883" | "3F000" | "42703") => {
                BackendError::Misconfigured(error.to_string())
            }
            // duplicate_prepared_statement, invalid_sql_statement_name: a
            // statement sqlx prepared by name on this connection's session
            // collides with another client's, or is gone. A session of our
            // own never does that: the connection goes through a pooler
            // that shares server sessions.
            Some("42P05" | "26000") => BackendError::Misconfigured(format!(
                "{error}: this connection's server session is shared with other clients (a \
                 transaction-pooling PgBouncer?): set PgConfig::pooler to Pooler::Transaction \
                 (see weir-postgres's deployment notes)"
            )),
            // A data exception (class 22: a NUL in text, a value out of
            // range): the statement was rolled back and the same data
            // would be refused again.
            Some(code) if code.starts_with("22") => BackendError::Refused(error.to_string()),
            // An interrupt ended the statement: query_canceled (a statement
            // timeout, a cancel request) or operator intervention (the
            // session terminated, the server shutting down). The server
            // acts on an interrupt wherever it next checks for one, which
            // can be after the transaction committed and before it
            // answered: the command may have been applied. The history
            // checker found exactly that (a cancelled claim whose effect
            // the rest of the history needs).
            Some("57014" | "57P01" | "57P02" | "57P03" | "57P05") => {
                BackendError::Lost(error.to_string())
            }
            // The server answered with an error: the statement (and its
            // transaction) was rolled back, so nothing was applied.
            _ => BackendError::Unavailable(error.to_string()),
        },
        // The connection broke or the answer was garbled: the command may
        // have been applied.
        _ => BackendError::Lost(error.to_string()),
    }
}
