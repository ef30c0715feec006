//! `ActivityContext`: what an activity execution knows about itself (instance, attempt,
//! idempotency key) and whether its result is still wanted. Activities run at least once;
//! use the key to make side effects idempotent.

/// Context passed to an activity that asks for it as its first parameter.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    pub(crate) instance_id: String,
    pub(crate) execution_id: String,
    pub(crate) name: String,
    pub(crate) seq: u64,
    pub(crate) attempt: u32,
    pub(crate) dequeue_count: u32,
    pub(crate) trace_parent: Option<crate::trace::TraceParent>,
    /// Set by the worker when the result is no longer wanted; None outside a worker.
    pub(crate) cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where heartbeats go (the worker watches it); None outside a worker.
    pub(crate) beats: Option<std::sync::Arc<tokio::sync::watch::Sender<Beat>>>,
    /// The heartbeat details the previous attempt of this call left when it timed out.
    pub(crate) previous_details: Option<String>,
}

/// The latest heartbeat of a running activity: how many so far, and their last details.
#[derive(Clone, Debug, Default)]
pub(crate) struct Beat {
    pub(crate) count: u64,
    pub(crate) details: Option<String>,
}

impl ActivityContext {
    /// A context for calling an activity directly, e.g. in a unit test.
    pub fn for_test(name: impl Into<String>) -> Self {
        Self {
            instance_id: "test-instance".into(),
            execution_id: "test-execution".into(),
            name: name.into(),
            seq: 0,
            attempt: 1,
            dequeue_count: 1,
            cancel: None,
            beats: None,
            previous_details: None,
            trace_parent: None,
        }
    }

    /// The trace context of the instance that scheduled this activity (from the
    /// `traceparent` its start carried), to pass on with requests the activity makes.
    pub fn trace_parent(&self) -> Option<crate::trace::TraceParent> {
        self.trace_parent
    }

    /// The orchestration instance that scheduled this activity.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The activity's durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The attempt number under a retry policy (1 for the first attempt).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times this exact task has been handed to a worker (more than 1 after a
    /// crash or an expired lease: activities run at least once).
    pub fn dequeue_count(&self) -> u32 {
        self.dequeue_count
    }

    /// Resolves when the result of this execution is no longer wanted, so a well-behaved
    /// activity can stop early (and return anything: its result is then dropped or
    /// refused). That is the case when the orchestration dropped the call before it
    /// completed (the losing branch of `when_any` or `race`, an attempt its call's
    /// schedule-to-close timeout beat: the episode's commit deletes the work item), when
    /// the orchestration instance is no longer running the execution that scheduled it
    /// (terminated, failed, completed, continued as new, or purged) or when this worker
    /// lost the activity's lease (another worker runs it now, or the call was dropped by
    /// an episode committed elsewhere). A dropped call is told at once on the worker that
    /// committed the episode; otherwise the worker looks at the instance every
    /// [`WorkerOptions::activity_cancel_poll`](crate::WorkerOptions::activity_cancel_poll)
    /// and at the lease when renewing it, so this comes that late at worst.
    ///
    /// Best effort: nothing forces an activity to stop, and outside a worker
    /// ([`for_test`](Self::for_test)) this never resolves.
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(rx) => {
                let mut rx = rx.clone();
                // An error means the worker dropped its side: the activity is over anyway.
                let _ = rx.wait_for(|c| *c).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Tells the worker this attempt is alive and making progress, resetting its heartbeat
    /// timeout ([`ActivityOptions::heartbeat_timeout`](crate::ActivityOptions::heartbeat_timeout)),
    /// and keeps `details` as its latest progress: if the attempt then times out, its
    /// `Timeout` failure carries them (`FailureDetails::details`, JSON) to the
    /// orchestration, and the call's next attempt reads them with
    /// [`last_heartbeat_details`](Self::last_heartbeat_details). Cheap: no store write of
    /// its own; the worker stores the latest details with its next lease renewal (every
    /// third of [`WorkerOptions::activity_lease`](crate::WorkerOptions::activity_lease),
    /// only when they changed), so a run of this task that starts after a worker crash or a
    /// lost lease reads them too, minus what came after the last renewal. Details that do
    /// not serialize are dropped (the beat still counts). Outside a worker it does nothing.
    pub fn heartbeat(&self, details: &impl serde::Serialize) {
        if let Some(beats) = &self.beats {
            let details = serde_json::to_string(details).ok();
            beats.send_modify(|b| {
                b.count += 1;
                if details.is_some() {
                    b.details = details;
                }
            });
        }
    }

    /// The latest heartbeat details an earlier run of this call left, decoded: those the
    /// previous attempt had when it timed out (under a retry policy), or those an earlier
    /// run of this same attempt stored before its worker crashed or lost the lease. None
    /// when there are none (a first run, a retry after another kind of failure) or when
    /// they do not decode as `T`.
    pub fn last_heartbeat_details<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.previous_details.as_deref()?).ok()
    }

    /// True once [`cancelled`](Self::cancelled) has resolved.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// A key that is the same for every delivery of this task and different for every
    /// other task: `{instance}:{execution}:{sequence}`. Use it to make side effects idempotent.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.instance_id, self.execution_id, self.seq)
    }
}
