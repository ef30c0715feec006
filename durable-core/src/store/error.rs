//! `StoreError`: what a store reports when a call fails. In: a kind, a message, and
//! optionally the cause; out: whether a retry can help ([`StoreError::is_retryable`]) and
//! the cause through [`std::error::Error::source`].

use std::sync::Arc;

use crate::instance::RuntimeStatus;

/// What kind of failure a [`StoreError`] is. Callers decide on the kind; the message is for
/// people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No instance with this id.
    NotFound,
    /// An instance with this id exists and has not finished (it has this status).
    AlreadyExists {
        /// The existing instance's status.
        status: RuntimeStatus,
    },
    /// The lease behind this lease token lapsed and another worker took the work item over,
    /// or the work item is gone; the call was refused and nothing changed (fencing).
    LeaseLost,
    /// The request was malformed (e.g. a continuation token this store did not issue).
    Invalid,
    /// The backend cannot serve the call now (busy, full disk, lost connection, a
    /// transaction that lost a race); the same call may succeed later. Retryable.
    Unavailable,
    /// The stored data is damaged or not this store's; someone must act.
    Corrupt,
    /// Any other failure a retry will not cure (a closed store, a bug, an unwritable file).
    Failed,
}

/// A failed store call: its kind, what failed, and the cause when there is one.
#[derive(Clone, Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    instance_id: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            instance_id: None,
            source: None,
        }
    }

    /// [`StoreErrorKind::NotFound`] for `instance_id`.
    pub fn not_found(instance_id: impl Into<String>) -> Self {
        let id = instance_id.into();
        Self {
            instance_id: Some(id.clone()),
            ..Self::new(
                StoreErrorKind::NotFound,
                format!("no instance with id '{id}'"),
            )
        }
    }

    /// [`StoreErrorKind::AlreadyExists`]: `instance_id` exists and is `status`.
    pub fn already_exists(instance_id: impl Into<String>, status: RuntimeStatus) -> Self {
        let id = instance_id.into();
        Self {
            instance_id: Some(id.clone()),
            ..Self::new(
                StoreErrorKind::AlreadyExists { status },
                format!("an instance with id '{id}' already exists and is {status}"),
            )
        }
    }

    /// [`StoreErrorKind::LeaseLost`].
    pub fn lease_lost() -> Self {
        Self::new(
            StoreErrorKind::LeaseLost,
            "the work item's lease lapsed and another worker took it over; the call was refused",
        )
    }

    /// [`StoreErrorKind::Invalid`] saying `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Invalid, message)
    }

    /// [`StoreErrorKind::Unavailable`] (retryable) saying `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// [`StoreErrorKind::Corrupt`] saying `message`.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, message)
    }

    /// [`StoreErrorKind::Failed`] (not retryable) saying `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Failed, message)
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Puts what was being done in front of the message ("opening x.db: the disk is full").
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// What failed, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The instance the error is about, for `NotFound` and `AlreadyExists`.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// True when the same call may succeed if retried later without anyone acting on the
    /// store ([`StoreErrorKind::Unavailable`]): callers retry with backoff, or answer "try
    /// again" rather than "failed".
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    /// True for [`StoreErrorKind::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        self.kind == StoreErrorKind::LeaseLost
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            StoreErrorKind::Unavailable | StoreErrorKind::Corrupt | StoreErrorKind::Failed => {
                write!(f, "store error: {}", self.message)?
            }
            _ => f.write_str(&self.message)?,
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Equal when they say the same thing (the causes compared by their text).
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.message == other.message
            && self.instance_id == other.instance_id
            && self.source.as_ref().map(|s| s.to_string())
                == other.source.as_ref().map(|s| s.to_string())
    }
}

impl Eq for StoreError {}

/// A shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;
