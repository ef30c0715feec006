//! PostgreSQL failures as store errors: which ones a retry can cure.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Whether a retry may cure `e`: a lost or refused connection, a server shutting down or
/// out of resources, a serialization failure or deadlock, a canceled statement. Constraint
/// violations, syntax errors and bad data are permanent.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // I/O, a connection reset, a timeout: no answer from the server.
        None => e.as_db_error().is_none(),
        Some(c) => {
            let code = c.code();
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources
                || code.starts_with("57P") // admin/crash shutdown, cannot connect now
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::QUERY_CANCELED
        }
    }
}

/// A PostgreSQL failure as a store error, classified, keeping the cause.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    let transient = is_transient(&e);
    let what = match e.as_db_error() {
        Some(db) => format!("PostgreSQL refused a statement ({})", db.code().code()),
        None if e.is_closed() => "the PostgreSQL connection closed".to_string(),
        None => "PostgreSQL failed".to_string(),
    };
    let err = if transient {
        StoreError::unavailable(what)
    } else {
        StoreError::failed(what)
    };
    err.with_source(e)
}

/// Like [`pg`], saying what was being done.
pub(crate) fn pg_in(what: impl std::fmt::Display, e: tokio_postgres::Error) -> StoreError {
    pg(e).context(what)
}

/// Stored data that does not decode.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(format!("PostgreSQL store: {what}"))
}
