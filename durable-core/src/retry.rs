//! Retry policies for activities and sub-orchestrations. Each attempt is its own durable
//! call, and the waits between attempts are durable timers, so retries survive restarts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TaskError;

/// How often and how long to retry a failed durable call.
///
/// The wait before attempt `n + 1` is `first_retry_interval * backoff_coefficient^(n - 1)`,
/// capped at `max_retry_interval`. Retrying stops after `max_attempts` attempts, when
/// `retry_timeout` has passed since the first attempt, for failures marked non-retriable,
/// or when the `handle` predicate says no.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt (more than zero).
    pub first_retry_interval: Duration,
    /// Growth factor of the wait (at least 1.0).
    pub backoff_coefficient: f64,
    /// Upper bound of one wait (default: one hour).
    pub max_retry_interval: Duration,
    /// Stop retrying once this long has passed since the first attempt.
    pub retry_timeout: Option<Duration>,
    handle: Option<RetryPredicate>,
}

/// Decides whether a failure is retried.
type RetryPredicate = Arc<dyn Fn(&TaskError) -> bool + Send + Sync>;

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("first_retry_interval", &self.first_retry_interval)
            .field("backoff_coefficient", &self.backoff_coefficient)
            .field("max_retry_interval", &self.max_retry_interval)
            .field("retry_timeout", &self.retry_timeout)
            .field("handle", &self.handle.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts with a fixed wait of `first_retry_interval`.
    pub fn new(max_attempts: u32, first_retry_interval: Duration) -> Self {
        Self {
            max_attempts,
            first_retry_interval,
            backoff_coefficient: 1.0,
            max_retry_interval: Duration::from_secs(3600),
            retry_timeout: None,
            handle: None,
        }
    }

    /// Sets the backoff coefficient.
    pub fn with_backoff_coefficient(mut self, c: f64) -> Self {
        self.backoff_coefficient = c;
        self
    }

    /// Sets the longest wait between attempts.
    pub fn with_max_retry_interval(mut self, d: Duration) -> Self {
        self.max_retry_interval = d;
        self
    }

    /// Stops retrying once `d` has passed since the first attempt.
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = Some(d);
        self
    }

    /// Retries only failures for which `handle` returns true.
    pub fn with_handle(
        mut self,
        handle: impl Fn(&TaskError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handle = Some(Arc::new(handle));
        self
    }

    /// Checks the policy's numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.first_retry_interval.is_zero() {
            return Err("first_retry_interval must be more than zero".into());
        }
        if !(self.backoff_coefficient >= 1.0 && self.backoff_coefficient.is_finite()) {
            return Err("backoff_coefficient must be a finite number of at least 1.0".into());
        }
        if self.max_retry_interval < self.first_retry_interval {
            return Err("max_retry_interval must be at least first_retry_interval".into());
        }
        Ok(())
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = self
            .backoff_coefficient
            .powi(attempt.saturating_sub(1) as i32);
        let secs = self.first_retry_interval.as_secs_f64() * factor;
        let max = self.max_retry_interval.as_secs_f64();
        Duration::from_secs_f64(secs.min(max))
    }

    pub(crate) fn should_retry(&self, e: &TaskError) -> bool {
        !e.failure.non_retriable && self.handle.as_ref().is_none_or(|h| h(e))
    }
}
