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

    pub(super) fn put(&mut self, id: String, exec: Cached, capacity: usize) {
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
