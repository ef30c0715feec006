//! `MemoryStore`: an in-process store for tests and for measuring the engine's own ceiling.
//! Not durable: everything is lost when the process exits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;

/// An in-memory [`Store`]. Cheap to create; share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    signals: WorkSignals,
    max_payload: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    instances: HashMap<String, Record>,
    /// Instances that may have visible messages and are not locked.
    ready: VecDeque<String>,
    in_ready: HashSet<String>,
    /// (visible at, message id, instance): delayed messages and orchestration lease expiries.
    delayed: BTreeSet<(DateTime<Utc>, u64, String)>,
    activities: HashMap<u64, ActivityRecord>,
    activity_ready: VecDeque<u64>,
    /// (visible at, activity id): delayed retries and activity lease expiries.
    activity_delayed: BTreeSet<(DateTime<Utc>, u64)>,
}

#[derive(Debug, Default)]
struct Record {
    state: Option<InstanceState>,
    history: Vec<HistoryEvent>,
    messages: BTreeMap<u64, OrchestrationMessage>,
    lock: Option<(String, DateTime<Utc>)>,
}

#[derive(Debug)]
struct ActivityRecord {
    item: ActivityWorkItem,
    /// Locked (leased) until, or delayed until.
    busy_until: Option<DateTime<Utc>>,
    locked: bool,
}

fn after(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default payload limit.
    pub fn new() -> Self {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD_BYTES)
    }

    /// An empty store that refuses payloads over `limit` bytes.
    pub fn with_max_payload(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            signals: WorkSignals::default(),
            max_payload: limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn mark_ready(&mut self, instance_id: &str) {
        if self.in_ready.insert(instance_id.to_string()) {
            self.ready.push_back(instance_id.to_string());
        }
    }

    /// Inserts a message; returns true when it was stored (visible now or delayed), so the
    /// caller signals dispatchers to fetch it or to recompute their wake-up time.
    fn push_message(&mut self, msg: OrchestrationMessage, now: DateTime<Utc>) -> bool {
        let id = self.id();
        let instance_id = msg.instance_id.clone();
        let visible_at = msg.visible_at;
        let Some(rec) = self.instances.get_mut(&instance_id) else {
            return false;
        };
        rec.messages.insert(id, msg);
        match visible_at {
            Some(t) if t > now => {
                self.delayed.insert((t, id, instance_id));
                true
            }
            _ => {
                self.mark_ready(&instance_id);
                true
            }
        }
    }

    fn promote_due(&mut self, now: DateTime<Utc>) {
        while let Some(first) = self.delayed.first() {
            if first.0 > now {
                break;
            }
            let (_, _, instance_id) = self.delayed.pop_first().expect("checked non-empty");
            if let Some(rec) = self.instances.get_mut(&instance_id) {
                if let Some((_, until)) = &rec.lock {
                    if *until <= now {
                        rec.lock = None;
                    }
                }
                self.mark_ready(&instance_id);
            }
        }
        while let Some(first) = self.activity_delayed.first() {
            if first.0 > now {
                break;
            }
            let (t, id) = self
                .activity_delayed
                .pop_first()
                .expect("checked non-empty");
            if let Some(rec) = self.activities.get_mut(&id) {
                if rec.busy_until == Some(t) {
                    rec.busy_until = None;
                    rec.locked = false;
                    self.activity_ready.push_back(id);
                }
            }
        }
    }

    fn create(&mut self, instance: NewInstance, now: DateTime<Utc>) -> StoreResult<()> {
        if let Some(rec) = self.instances.get(&instance.instance_id) {
            if let Some(state) = &rec.state {
                if !state.status.is_terminal() {
                    return Err(StoreError::InstanceExists {
                        instance_id: instance.instance_id.clone(),
                        status: state.status,
                    });
                }
            }
        }
        // A worker still holding the old instance's lease loses it: its commit is refused.
        self.instances.remove(&instance.instance_id);
        self.instances.insert(
            instance.instance_id.clone(),
            Record {
                state: Some(instance.initial_state()),
                history: Vec::new(),
                messages: BTreeMap::new(),
                lock: None,
            },
        );
        self.push_message(instance.start_message(), now);
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        check_payload(
            || format!("input of instance '{}'", instance.instance_id),
            instance.input.as_deref(),
            self.max_payload,
        )?;
        let id = instance.instance_id.clone();
        self.lock().create(instance, Utc::now())?;
        self.signals.orchestrations.notify_one();
        self.signals.instance_changed(&id);
        Ok(())
    }

    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()> {
        check_payload(
            || format!("message to instance '{}'", message.instance_id),
            message_payload(&message.event),
            self.max_payload,
        )?;
        let mut inner = self.lock();
        if !inner.instances.contains_key(&message.instance_id) {
            return Err(StoreError::NotFound(message.instance_id));
        }
        inner.push_message(message, Utc::now());
        drop(inner);
        self.signals.orchestrations.notify_one();
        Ok(())
    }

    async fn fetch_orchestration_work_item(
        &self,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let now = Utc::now();
        let mut inner = self.lock();
        inner.promote_due(now);
        while let Some(instance_id) = inner.ready.pop_front() {
            inner.in_ready.remove(&instance_id);
            let Some(rec) = inner.instances.get_mut(&instance_id) else {
                continue;
            };
            if let Some((_, until)) = &rec.lock {
                if *until > now {
                    continue;
                }
            }
            let messages: Vec<(u64, OrchestrationMessage)> = rec
                .messages
                .iter()
                .filter(|(_, m)| m.visible_at.is_none_or(|t| t <= now))
                .take(MAX_MESSAGES_PER_WORK_ITEM)
                .map(|(id, m)| (*id, m.clone()))
                .collect();
            if messages.is_empty() {
                continue;
            }
            let token = random_id();
            let until = after(lease);
            rec.lock = Some((token.clone(), until));
            let item = OrchestrationWorkItem {
                instance_id: instance_id.clone(),
                lock_token: token,
                messages,
                state: rec.state.clone(),
                history_len: rec.history.len() as u64,
            };
            let id = inner.id();
            inner.delayed.insert((until, id, instance_id));
            return Ok(Some(item));
        }
        Ok(None)
    }

    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        check_commit_payloads(&commit, self.max_payload)?;
        let now = Utc::now();
        let mut inner = self.lock();
        let rec = inner
            .instances
            .get_mut(&commit.instance_id)
            .ok_or(StoreError::LockLost)?;
        match &rec.lock {
            Some((token, _)) if *token == commit.lock_token => {}
            _ => return Err(StoreError::LockLost),
        }
        for id in &commit.consumed {
            rec.messages.remove(id);
        }
        match commit.history {
            HistoryUpdate::Append(events) => rec.history.extend(events),
            HistoryUpdate::Replace(events) => rec.history = events,
        }
        let state_changed = commit.state.is_some();
        if let Some(state) = commit.state {
            rec.state = Some(state);
        }
        rec.lock = None;
        let has_more = !rec.messages.is_empty();
        if has_more {
            inner.mark_ready(&commit.instance_id);
        }
        let mut woke_activities = false;
        for mut a in commit.activities {
            a.id = inner.id();
            let id = a.id;
            inner.activities.insert(
                id,
                ActivityRecord {
                    item: a,
                    busy_until: None,
                    locked: false,
                },
            );
            inner.activity_ready.push_back(id);
            woke_activities = true;
        }
        let mut woke = has_more;
        for child in commit.new_instances {
            let conflict = inner
                .instances
                .get(&child.instance_id)
                .and_then(|r| r.state.as_ref())
                .filter(|s| !s.status.is_terminal())
                .map(|s| s.status);
            match conflict {
                Some(status) => {
                    if let Some(msg) = child_conflict_message(&child, status) {
                        woke |= inner.push_message(msg, now);
                    }
                }
                None => {
                    inner.create(child, now)?;
                    woke = true;
                }
            }
        }
        for msg in commit.messages {
            woke |= inner.push_message(msg, now);
        }
        drop(inner);
        if woke {
            self.signals.orchestrations.notify_one();
        }
        if woke_activities {
            self.signals.activities.notify_one();
        }
        if state_changed {
            self.signals.instance_changed(&commit.instance_id);
        }
        Ok(())
    }

    async fn abandon_orchestration_work_item(
        &self,
        instance_id: &str,
        lock_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        let mut inner = self.lock();
        let Some(rec) = inner.instances.get_mut(instance_id) else {
            return Err(StoreError::LockLost);
        };
        match &rec.lock {
            Some((token, _)) if token == lock_token => {}
            _ => return Err(StoreError::LockLost),
        }
        if delay.is_zero() {
            rec.lock = None;
            inner.mark_ready(instance_id);
            drop(inner);
            self.signals.orchestrations.notify_one();
        } else {
            // Keep it locked until the delay passes; expiry makes it ready again.
            let until = after(delay);
            rec.lock = Some((random_id(), until));
            let id = inner.id();
            inner.delayed.insert((until, id, instance_id.to_string()));
            drop(inner);
            self.signals.orchestrations.notify_one();
        }
        Ok(())
    }

    async fn fetch_activity_work_items(
        &self,
        lease: Duration,
        max: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let now = Utc::now();
        let until = after(lease);
        let mut inner = self.lock();
        inner.promote_due(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = inner.activity_ready.pop_front() else {
                break;
            };
            let Some(rec) = inner.activities.get_mut(&id) else {
                continue;
            };
            if rec.locked {
                continue;
            }
            rec.locked = true;
            rec.busy_until = Some(until);
            rec.item.lock_token = random_id();
            rec.item.dequeue_count += 1;
            out.push(rec.item.clone());
            inner.activity_delayed.insert((until, id));
        }
        Ok(out)
    }

    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()> {
        check_payload(
            || format!("result of activity '{}'", item.name),
            message_payload(&result.event),
            self.max_payload,
        )?;
        let now = Utc::now();
        let mut inner = self.lock();
        match inner.activities.get(&item.id) {
            Some(rec) if rec.locked && rec.item.lock_token == item.lock_token => {}
            _ => return Err(StoreError::LockLost),
        }
        inner.activities.remove(&item.id);
        let woke = inner.push_message(result, now);
        drop(inner);
        if woke {
            self.signals.orchestrations.notify_one();
        }
        Ok(())
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        let until = after(lease);
        let mut inner = self.lock();
        match inner.activities.get_mut(&item.id) {
            Some(rec) if rec.locked && rec.item.lock_token == item.lock_token => {
                rec.busy_until = Some(until);
            }
            _ => return Err(StoreError::LockLost),
        }
        inner.activity_delayed.insert((until, item.id));
        Ok(())
    }

    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        let mut inner = self.lock();
        match inner.activities.get_mut(&item.id) {
            Some(rec) if rec.locked && rec.item.lock_token == item.lock_token => {
                rec.item.lock_token.clear();
                if delay.is_zero() {
                    rec.locked = false;
                    rec.busy_until = None;
                    inner.activity_ready.push_back(item.id);
                    drop(inner);
                    self.signals.activities.notify_one();
                } else {
                    let until = after(delay);
                    rec.busy_until = Some(until);
                    inner.activity_delayed.insert((until, item.id));
                    drop(inner);
                    self.signals.activities.notify_one();
                }
                Ok(())
            }
            _ => Err(StoreError::LockLost),
        }
    }

    async fn next_wakeup(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let inner = self.lock();
        let a = inner.delayed.first().map(|d| d.0);
        let b = inner.activity_delayed.first().map(|d| d.0);
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceState>> {
        Ok(self
            .lock()
            .instances
            .get(instance_id)
            .and_then(|r| r.state.clone()))
    }

    async fn read_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        Ok(self
            .lock()
            .instances
            .get(instance_id)
            .map(|r| r.history.clone())
            .unwrap_or_default())
    }

    async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page_size: usize,
        continuation_token: Option<&str>,
    ) -> StoreResult<Page<InstanceState>> {
        let after_key = continuation_token.map(parse_token).transpose()?;
        let inner = self.lock();
        let mut all: Vec<&InstanceState> = inner
            .instances
            .values()
            .filter_map(|r| r.state.as_ref())
            .filter(|s| filter.matches(s))
            .filter(|s| {
                after_key.as_ref().is_none_or(|(t, id)| {
                    (s.created_at.timestamp_micros(), s.instance_id.as_str())
                        > (t.timestamp_micros(), id.as_str())
                })
            })
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.instance_id).cmp(&(b.created_at, &b.instance_id)));
        let page_size = page_size.max(1);
        let more = all.len() > page_size;
        let items: Vec<InstanceState> = all.into_iter().take(page_size).cloned().collect();
        let continuation_token = if more {
            items
                .last()
                .map(|s| make_token(s.created_at, &s.instance_id))
        } else {
            None
        };
        Ok(Page {
            items,
            continuation_token,
        })
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<bool> {
        let mut inner = self.lock();
        let removed = inner.instances.remove(instance_id).is_some();
        if removed {
            inner
                .activities
                .retain(|_, a| a.item.instance_id != instance_id);
        }
        Ok(removed)
    }

    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .instances
            .iter()
            .filter_map(|(id, r)| r.state.as_ref().map(|s| (id, s)))
            .filter(|(_, s)| s.status.is_terminal() && filter.matches(s))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            inner.instances.remove(id);
        }
        let set: HashSet<&String> = ids.iter().collect();
        inner
            .activities
            .retain(|_, a| !set.contains(&a.item.instance_id));
        Ok(ids.len() as u64)
    }

    fn signals(&self) -> &WorkSignals {
        &self.signals
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload
    }
}

/// Encodes a listing position as an opaque continuation token.
pub(crate) fn make_token(created_at: DateTime<Utc>, instance_id: &str) -> String {
    format!("{}|{}", created_at.timestamp_micros(), instance_id)
}

/// Decodes a continuation token made by [`make_token`].
pub(crate) fn parse_token(token: &str) -> StoreResult<(DateTime<Utc>, String)> {
    let bad = || StoreError::Invalid(format!("invalid continuation token '{token}'"));
    let (micros, id) = token.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((t, id.to_string()))
}
