//! `ActivityContext`: what an activity execution knows about itself (instance, attempt,
//! idempotency key). Activities run at least once; use the key to make side effects
//! idempotent.

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

    /// A key that is the same for every delivery of this task and different for every
    /// other task: `{instance}:{execution}:{sequence}`. Use it to make side effects idempotent.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.instance_id, self.execution_id, self.seq)
    }
}
