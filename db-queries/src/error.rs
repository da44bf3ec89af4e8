//! Turning database errors into API errors.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use halyard_common::Error;

/// An error inside a transaction: either the database's, or a decision of ours (e.g. "not
/// enough capacity") that must roll the transaction back.
#[derive(Debug)]
pub(crate) enum TxnError {
    Database(DieselError),
    Public(Error),
}

impl From<DieselError> for TxnError {
    fn from(e: DieselError) -> Self {
        TxnError::Database(e)
    }
}

impl From<Error> for TxnError {
    fn from(e: Error) -> Self {
        TxnError::Public(e)
    }
}

impl TxnError {
    pub(crate) fn into_public(self) -> Error {
        match self {
            TxnError::Database(e) => public_error_from_diesel(e),
            TxnError::Public(e) => e,
        }
    }

    /// Whether the whole transaction may simply be run again.
    pub(crate) fn is_retryable_conflict(&self) -> bool {
        matches!(
            self,
            TxnError::Database(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ) || matches!(self, TxnError::Database(DieselError::DatabaseError(_, info))
            if info.message().contains("deadlock detected"))
    }
}

/// Whether this database error means the database is (perhaps briefly) out of reach.
fn is_unavailable(kind: &DatabaseErrorKind, message: &str) -> bool {
    match kind {
        DatabaseErrorKind::UnableToSendCommand
        | DatabaseErrorKind::ClosedConnection
        | DatabaseErrorKind::SerializationFailure => true,
        // Connection-class failures without a dedicated kind: the server shutting down
        // (SQLSTATE 57P01) or failing over, and deadlock victims (40P01), are all retryable.
        _ => {
            message.contains("terminating connection")
                || message.contains("connection closed")
                || message.contains("the database system is")
                || message.contains("deadlock detected")
        }
    }
}

/// The generic mapping of a diesel error. Callers that know better (a unique violation means
/// "name taken", no row means "not found") match those cases before falling back to this.
pub(crate) fn public_error_from_diesel(e: DieselError) -> Error {
    match &e {
        DieselError::DatabaseError(kind, info) if is_unavailable(kind, info.message()) => {
            Error::unavailable(format!("database: {}", info.message()))
        }
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => Error::conflict(
            format!("conflicting object already exists: {}", info.message()),
        ),
        DieselError::DeserializationError(inner) => Error::internal(format!(
            "database holds a value this build cannot read: {inner}"
        )),
        _ => Error::internal(format!("database: {e}")),
    }
}

/// Whether the error is a unique-constraint violation (e.g. a name already taken).
pub(crate) fn is_unique_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Whether the error is a foreign-key violation (a referenced row does not exist).
pub(crate) fn is_foreign_key_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)
    )
}
