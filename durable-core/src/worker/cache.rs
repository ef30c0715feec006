//! The instance cache: live executions kept between episodes, least recently used evicted
//! first, so an episode on a cached execution replays nothing.

use super::*;
use crate::replay::Execution;

/// Live executions by instance id, least recently used evicted first.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) tick: u64,
    pub(super) entries: HashMap<String, (u64, Cached)>,
    pub(super) order: BTreeMap<u64, String>,
    /// Instances whose execution an episode of this worker has taken out, by the token of
    /// that taking: an episode that finds the execution out waits for it to come back
    /// (its commit is being answered) instead of replaying the history.
    pub(super) out: HashMap<String, u64>,
}

/// A live execution with the instance state its last commit stored.
pub(super) struct Cached {
    pub(super) exec: Execution,
    pub(super) state: Option<InstanceState>,
}

impl Cache {
    pub(super) fn take(&mut self, id: &str) -> Option<Cached> {
        let (tick, cached) = self.entries.remove(id)?;
        self.order.remove(&tick);
        Some(cached)
    }

    /// Takes the execution out for an episode and marks it out, under a token for
    /// [`back`](Self::back).
    pub(super) fn take_out(&mut self, id: &str) -> Option<(Cached, u64)> {
        let cached = self.take(id)?;
        Some((cached, self.mark_out(id)))
    }

    /// Marks the instance's execution out for an episode that has none yet (it starts the
    /// execution or replays it, and puts it in when its commit is answered).
    pub(super) fn mark_out(&mut self, id: &str) -> u64 {
        self.tick += 1;
        self.out.insert(id.to_owned(), self.tick);
        self.tick
    }

    /// Clears the mark of the taking `token` (its execution was dropped, or put back and
    /// maybe taken again by another); true when it was still marked.
    pub(super) fn back(&mut self, id: &str, token: u64) -> bool {
        if self.out.get(id) == Some(&token) {
            self.out.remove(id);
            return true;
        }
        false
    }

    pub(super) fn put(&mut self, id: String, exec: Cached, capacity: usize) {
        self.out.remove(&id);
        if capacity == 0 {
            return;
        }
        self.take(&id);
        while self.entries.len() >= capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&victim);
        }
        self.tick += 1;
        self.order.insert(self.tick, id.clone());
        self.entries.insert(id, (self.tick, exec));
    }
}

/// How long an episode waits for its instance's execution to come back into the cache
/// (from an episode of this worker whose commit is being answered) before it replays the
/// history instead.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// An execution taken out of the cache for an episode: dropping it clears the out mark
/// (when no one has put the execution back and taken it again since) and wakes episodes
/// waiting for the instance.
pub(super) struct Taken<'a> {
    shared: &'a Shared,
    id: String,
    token: u64,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let cleared = self
            .shared
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back(&self.id, self.token);
        if cleared {
            self.shared.cache_back.notify_waiters();
        }
    }
}

/// Takes the instance's cached execution for a leased episode, and marks it out until the
/// returned [`Taken`] is dropped (also when there is none: the episode will put one in).
/// When another episode of this worker has it out (its commit is being answered: the store
/// may hand the instance out again before the execution is put back), waits for it, at
/// most [`CACHE_WAIT`].
pub(super) async fn take_cached<'a>(shared: &'a Shared, id: &str) -> (Option<Cached>, Taken<'a>) {
    let deadline = tokio::time::Instant::now() + CACHE_WAIT;
    loop {
        let back = shared.cache_back.notified();
        tokio::pin!(back);
        back.as_mut().enable();
        {
            let mut cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
            let found = cache.take_out(id);
            if found.is_some()
                || !cache.out.contains_key(id)
                || tokio::time::Instant::now() >= deadline
            {
                let (cached, token) = match found {
                    Some((cached, token)) => (Some(cached), token),
                    None => (None, cache.mark_out(id)),
                };
                let taken = Taken {
                    shared,
                    id: id.to_owned(),
                    token,
                };
                return (cached, taken);
            }
        }
        let _ = tokio::time::timeout_at(deadline, back).await;
    }
}

/// Takes the instance's cached execution without waiting (None when it is out).
pub(super) fn try_take_cached<'a>(shared: &'a Shared, id: &str) -> Option<(Cached, Taken<'a>)> {
    let (cached, token) = shared
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_out(id)?;
    Some((
        cached,
        Taken {
            shared,
            id: id.to_owned(),
            token,
        },
    ))
}

impl Shared {
    /// Puts an execution (back) into the cache and wakes episodes waiting for it.
    pub(super) fn cache_put(&self, id: String, cached: Cached) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
            id,
            cached,
            self.options.cache_capacity,
        );
        self.cache_back.notify_waiters();
    }
}
