//! `MemoryStore`: an in-process store for tests and for measuring the engine's own ceiling.
//! Not durable: everything is lost when the process exits. Implements every capability,
//! [`FastPaths`] included.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::signals::LocalSignals;
use super::*;

/// An in-memory [`Store`]. Cheap to create; share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    signals: LocalSignals,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    instances: HashMap<String, Record>,
    /// Instances that may have visible messages and are not leased.
    ready: VecDeque<String>,
    in_ready: HashSet<String>,
    /// (visible at, entry id, instance): delayed messages and orchestration lease expiries.
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
    /// Pending messages by entry id, in id order (ids only grow, so a new one goes last).
    /// A vector sized to its messages, freed when the last is consumed: an instance in
    /// flight waiting for an event holds no allocation for messages (a map's node cost
    /// about 3 KB per instance, empty or not).
    messages: Vec<(u64, OrchestrationMessage)>,
    lease: Option<Lease>,
    /// Hand-outs since the last commit, not counting those given back by an abandon.
    dequeue_count: u32,
}

/// A hold on an instance: a worker's lease (with its owner), or an abandon's delay (no
/// owner).
#[derive(Debug)]
struct Lease {
    token: String,
    expires_at: DateTime<Utc>,
    owner: Option<WorkerId>,
}

#[derive(Debug)]
struct ActivityRecord {
    item: ActivityWorkItem,
    /// Leased until, or delayed until.
    busy_until: Option<DateTime<Utc>>,
    /// The lease's owner while leased.
    owner: Option<WorkerId>,
}

impl ActivityRecord {
    fn leased_by(&self, item: &ActivityWorkItem) -> bool {
        self.owner.is_some() && self.item.lease_token == item.lease_token
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store reading lease and timer times from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            signals: LocalSignals::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Wakes whoever waits for what a change made visible.
    fn wake(&self, w: Wake, instance_id: Option<&str>) {
        if w.orchestrations {
            self.signals.orchestrations_changed();
        }
        if w.activities {
            self.signals.activities_changed();
        }
        for id in instance_id
            .into_iter()
            .chain(w.instances.iter().map(|s| s.as_str()))
        {
            self.signals.instance_changed(id);
        }
    }
}

/// Where a store's work stands, for a test environment driving virtual time.
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pending {
    /// Work is visible now or held by a worker: an episode or an activity may still run.
    pub busy: bool,
    /// The earliest time delayed work (a durable timer, a retry, an abandoned item's delay)
    /// becomes visible; lease expiries of held work are not counted.
    pub next_due: Option<DateTime<Utc>>,
}

#[cfg(feature = "testing")]
impl MemoryStore {
    /// Where work stands at the clock's current time.
    pub(crate) fn pending(&self) -> Pending {
        let now = self.now();
        let inner = self.lock();
        let mut busy = false;
        let mut next_due: Option<DateTime<Utc>> = None;
        let mut due = |t: DateTime<Utc>| next_due = Some(next_due.map_or(t, |n| n.min(t)));
        for rec in inner.instances.values() {
            let held = rec.lease.as_ref().filter(|l| l.expires_at > now);
            match held {
                Some(l) if l.owner.is_some() => busy = true,
                Some(l) if !rec.messages.is_empty() => due(l.expires_at),
                _ => {}
            }
            for (_, m) in &rec.messages {
                match m.visible_at {
                    Some(t) if t > now => due(t),
                    _ if held.is_none() => busy = true,
                    _ => {}
                }
            }
        }
        for rec in inner.activities.values() {
            match rec.busy_until {
                Some(t) if rec.owner.is_none() && t > now => due(t),
                _ => busy = true,
            }
        }
        Pending { busy, next_due }
    }
}

/// What a change should wake.
#[derive(Default)]
struct Wake {
    orchestrations: bool,
    activities: bool,
    instances: Vec<String>,
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
        if rec.messages.is_empty() {
            rec.messages.reserve_exact(1);
        }
        rec.messages.push((id, msg));
        match visible_at {
            Some(t) if t > now => {
                self.delayed.insert((t, id, instance_id));
            }
            _ => self.mark_ready(&instance_id),
        }
        true
    }

    fn promote_due(&mut self, now: DateTime<Utc>) {
        while let Some(first) = self.delayed.first() {
            if first.0 > now {
                break;
            }
            let (_, _, instance_id) = self.delayed.pop_first().expect("checked non-empty");
            if let Some(rec) = self.instances.get_mut(&instance_id) {
                if rec.lease.as_ref().is_some_and(|l| l.expires_at <= now) {
                    rec.lease = None;
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
                    rec.owner = None;
                    self.activity_ready.push_back(id);
                }
            }
        }
    }

    /// The earliest time delayed work or a lapsing lease makes work visible.
    fn next_due(&self) -> Option<DateTime<Utc>> {
        let a = self.delayed.first().map(|d| d.0);
        let b = self.activity_delayed.first().map(|d| d.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn create(&mut self, instance: NewInstance, now: DateTime<Utc>) -> StoreResult<()> {
        if let Some(rec) = self.instances.get(&instance.instance_id) {
            if let Some(state) = &rec.state {
                if !state.status.is_terminal() {
                    return Err(StoreError::already_exists(
                        instance.instance_id.clone(),
                        state.status,
                    ));
                }
            }
        }
        // A worker still holding the old instance's lease loses it: its commit is refused.
        self.instances.remove(&instance.instance_id);
        self.instances.insert(
            instance.instance_id.clone(),
            Record {
                state: Some(instance.initial_state()),
                ..Record::default()
            },
        );
        self.push_message(instance.start_message(), now);
        Ok(())
    }

    /// Leases `instance_id` to `owner` when no one holds it and it has visible messages
    /// (or `even_without_messages`), with up to [`MAX_MESSAGES_PER_WORK_ITEM`] of them.
    fn lease_instance(
        &mut self,
        instance_id: &str,
        owner: &WorkerId,
        lease: Duration,
        now: DateTime<Utc>,
        even_without_messages: bool,
    ) -> Option<OrchestrationWorkItem> {
        let rec = self.instances.get_mut(instance_id)?;
        if rec.lease.as_ref().is_some_and(|l| l.expires_at > now) {
            return None;
        }
        let messages: Vec<(u64, OrchestrationMessage)> = rec
            .messages
            .iter()
            .filter(|(_, m)| m.visible_at.is_none_or(|t| t <= now))
            .take(MAX_MESSAGES_PER_WORK_ITEM)
            .cloned()
            .collect();
        if messages.is_empty() && !even_without_messages {
            return None;
        }
        let token = random_id();
        let expires_at = after(now, lease);
        rec.lease = Some(Lease {
            token: token.clone(),
            expires_at,
            owner: Some(owner.clone()),
        });
        rec.dequeue_count = rec.dequeue_count.saturating_add(1);
        let item = OrchestrationWorkItem {
            instance_id: instance_id.to_string(),
            lease_token: token,
            messages,
            state: rec.state.clone(),
            history_len: rec.history.len() as u64,
            dequeue_count: rec.dequeue_count,
        };
        let id = self.id();
        self.delayed
            .insert((expires_at, id, instance_id.to_string()));
        Some(item)
    }

    /// Checks that `item`'s lease is held.
    fn check_activity(&self, item: &ActivityWorkItem) -> StoreResult<()> {
        match self.activities.get(&item.id) {
            Some(rec) if rec.leased_by(item) => Ok(()),
            _ => Err(StoreError::lease_lost()),
        }
    }

    /// Applies a commit whose fence the caller checked; leases up to `direct.max` new
    /// activities to `direct.owner`.
    fn apply_commit(
        &mut self,
        commit: OrchestrationCommit,
        direct: Option<DirectLease<'_>>,
        now: DateTime<Utc>,
        w: &mut Wake,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let rec = self
            .instances
            .get_mut(&commit.instance_id)
            .ok_or_else(StoreError::lease_lost)?;
        if !commit.consumed.is_empty() {
            let mut consumed = commit.consumed.clone();
            consumed.sort_unstable();
            rec.messages
                .retain(|(id, _)| consumed.binary_search(id).is_err());
            if rec.messages.is_empty() {
                rec.messages = Vec::new();
            }
        }
        match commit.history {
            HistoryUpdate::Append(events) => rec.history.extend(events),
            HistoryUpdate::Replace(events) => rec.history = events,
        }
        if let Some(state) = commit.state {
            rec.state = Some(state);
            w.instances.push(commit.instance_id.clone());
        }
        rec.lease = None;
        rec.dequeue_count = 0;
        if !rec.messages.is_empty() {
            self.mark_ready(&commit.instance_id);
            w.orchestrations = true;
        }
        if !commit.cancelled_activities.is_empty() {
            let instance_id = &commit.instance_id;
            let cancelled = &commit.cancelled_activities;
            // Queue entries of a removed item are skipped when they come up.
            self.activities.retain(|_, rec| {
                rec.item.instance_id != *instance_id
                    || !cancelled
                        .iter()
                        .any(|c| c.seq == rec.item.seq && c.execution_id == rec.item.execution_id)
            });
        }
        let mut leased = Vec::new();
        for mut a in commit.activities {
            a.id = self.id();
            a.scheduled_at = Some(now);
            let id = a.id;
            let mut rec = ActivityRecord {
                item: a,
                busy_until: None,
                owner: None,
            };
            match direct {
                Some(d) if leased.len() < d.max => {
                    let until = after(now, d.lease);
                    rec.item.lease_token = random_id();
                    rec.item.dequeue_count = 1;
                    rec.busy_until = Some(until);
                    rec.owner = Some(d.owner.clone());
                    leased.push(rec.item.clone());
                    self.activity_delayed.insert((until, id));
                }
                _ => {
                    self.activity_ready.push_back(id);
                    w.activities = true;
                }
            }
            self.activities.insert(id, rec);
        }
        for child in commit.new_instances {
            let conflict = self
                .instances
                .get(&child.instance_id)
                .and_then(|r| r.state.as_ref())
                .filter(|s| !s.status.is_terminal())
                .map(|s| s.status);
            match conflict {
                Some(status) => {
                    if let Some(msg) = child_conflict_message(&child, status, now) {
                        w.orchestrations |= self.push_message(msg, now);
                    }
                }
                None => {
                    w.instances.push(child.instance_id.clone());
                    self.create(child, now)?;
                    w.orchestrations = true;
                }
            }
        }
        for msg in commit.messages {
            w.orchestrations |= self.push_message(msg, now);
        }
        Ok(leased)
    }

    fn check_lease(&self, instance_id: &str, lease_token: &str) -> StoreResult<()> {
        match self
            .instances
            .get(instance_id)
            .and_then(|r| r.lease.as_ref())
        {
            Some(l) if l.token == lease_token && l.owner.is_some() => Ok(()),
            _ => Err(StoreError::lease_lost()),
        }
    }

    fn complete_activity(
        &mut self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.check_activity(item)?;
        self.activities.remove(&item.id);
        Ok(self.push_message(result, now))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        let id = instance.instance_id.clone();
        self.lock().create(instance, self.now())?;
        self.signals.orchestrations_changed();
        self.signals.instance_changed(&id);
        Ok(())
    }

    async fn send_message(&self, message: OrchestrationMessage) -> StoreResult<()> {
        let mut inner = self.lock();
        if !inner.instances.contains_key(&message.instance_id) {
            return Err(StoreError::not_found(message.instance_id));
        }
        inner.push_message(message, self.now());
        drop(inner);
        self.signals.orchestrations_changed();
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<OrchestrationWorkItem>> {
        self.signals
            .fetch_orchestrations(self.clock.as_ref(), wait, || async {
                let now = self.now();
                let mut inner = self.lock();
                inner.promote_due(now);
                let mut out = Vec::new();
                while out.len() < max {
                    let Some(instance_id) = inner.ready.pop_front() else {
                        break;
                    };
                    inner.in_ready.remove(&instance_id);
                    if let Some(item) = inner.lease_instance(&instance_id, owner, lease, now, false)
                    {
                        out.push(item);
                    }
                }
                Ok((out, inner.next_due()))
            })
            .await
    }

    async fn commit_orchestration(&self, commit: OrchestrationCommit) -> StoreResult<()> {
        let now = self.now();
        let mut w = Wake::default();
        {
            let mut inner = self.lock();
            inner.check_lease(&commit.instance_id, &commit.lease_token)?;
            inner.apply_commit(commit, None, now, &mut w)?;
        }
        self.wake(w, None);
        Ok(())
    }

    async fn abandon_orchestration(
        &self,
        instance_id: &str,
        lease_token: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        let now = self.now();
        let mut inner = self.lock();
        inner.check_lease(instance_id, lease_token)?;
        if let Some(rec) = inner.instances.get_mut(instance_id) {
            // Given back, not lost: this hand-out does not count towards poison.
            rec.dequeue_count = rec.dequeue_count.saturating_sub(1);
        }
        if delay.is_zero() {
            if let Some(rec) = inner.instances.get_mut(instance_id) {
                rec.lease = None;
            }
            inner.mark_ready(instance_id);
        } else {
            // Held (by no one) until the delay passes; the expiry makes it ready again.
            let until = after(now, delay);
            if let Some(rec) = inner.instances.get_mut(instance_id) {
                rec.lease = Some(Lease {
                    token: random_id(),
                    expires_at: until,
                    owner: None,
                });
            }
            let id = inner.id();
            inner.delayed.insert((until, id, instance_id.to_string()));
        }
        drop(inner);
        self.signals.orchestrations_changed();
        Ok(())
    }

    async fn renew_orchestration_lease(
        &self,
        instance_id: &str,
        lease_token: &str,
        lease: Duration,
    ) -> StoreResult<()> {
        let until = after(self.now(), lease);
        let mut inner = self.lock();
        inner.check_lease(instance_id, lease_token)?;
        if let Some(l) = inner
            .instances
            .get_mut(instance_id)
            .and_then(|r| r.lease.as_mut())
        {
            l.expires_at = until;
        }
        let id = inner.id();
        inner.delayed.insert((until, id, instance_id.to_string()));
        Ok(())
    }

    async fn fetch_activity_work(
        &self,
        owner: &WorkerId,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.signals
            .fetch_activities(self.clock.as_ref(), wait, || async {
                let now = self.now();
                let until = after(now, lease);
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
                    if rec.owner.is_some() || rec.busy_until.is_some() {
                        continue;
                    }
                    rec.owner = Some(owner.clone());
                    rec.busy_until = Some(until);
                    rec.item.lease_token = random_id();
                    rec.item.dequeue_count += 1;
                    out.push(rec.item.clone());
                    inner.activity_delayed.insert((until, id));
                }
                Ok((out, inner.next_due()))
            })
            .await
    }

    async fn complete_activity(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
    ) -> StoreResult<()> {
        let woke = self.lock().complete_activity(item, result, self.now())?;
        if woke {
            self.signals.orchestrations_changed();
        }
        Ok(())
    }

    async fn abandon_activity(&self, item: &ActivityWorkItem, delay: Duration) -> StoreResult<()> {
        let now = self.now();
        let mut inner = self.lock();
        inner.check_activity(item)?;
        let rec = inner.activities.get_mut(&item.id).expect("checked above");
        rec.item.lease_token.clear();
        rec.owner = None;
        if delay.is_zero() {
            rec.busy_until = None;
            inner.activity_ready.push_back(item.id);
        } else {
            let until = after(now, delay);
            rec.busy_until = Some(until);
            inner.activity_delayed.insert((until, item.id));
        }
        drop(inner);
        self.signals.activities_changed();
        Ok(())
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
    ) -> StoreResult<()> {
        let until = after(self.now(), lease);
        let mut inner = self.lock();
        inner.check_activity(item)?;
        if let Some(rec) = inner.activities.get_mut(&item.id) {
            rec.busy_until = Some(until);
        }
        inner.activity_delayed.insert((until, item.id));
        Ok(())
    }

    async fn renew_activity_lease_with_heartbeat(
        &self,
        item: &ActivityWorkItem,
        lease: Duration,
        details: &str,
    ) -> StoreResult<()> {
        let until = after(self.now(), lease);
        let mut inner = self.lock();
        inner.check_activity(item)?;
        if let Some(rec) = inner.activities.get_mut(&item.id) {
            rec.busy_until = Some(until);
            rec.item.heartbeat_details = Some(details.to_string());
        }
        inner.activity_delayed.insert((until, item.id));
        Ok(())
    }

    async fn activity_heartbeats(&self, instance_id: &str) -> StoreResult<Vec<ActivityHeartbeat>> {
        let inner = self.lock();
        let mut out: Vec<ActivityHeartbeat> = inner
            .activities
            .values()
            .filter(|r| r.item.instance_id == instance_id)
            .filter_map(|r| {
                Some(ActivityHeartbeat {
                    name: r.item.name.clone(),
                    seq: r.item.seq,
                    attempt: r.item.attempt,
                    details: r.item.heartbeat_details.clone()?,
                })
            })
            .collect();
        out.sort_by_key(|h| h.seq);
        Ok(out)
    }

    async fn release_leases(&self, owner: &WorkerId) -> StoreResult<u64> {
        let mut inner = self.lock();
        let mut released = 0u64;
        let held: Vec<String> = inner
            .instances
            .iter()
            .filter(|(_, r)| {
                r.lease
                    .as_ref()
                    .is_some_and(|l| l.owner.as_ref() == Some(owner))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in held {
            if let Some(rec) = inner.instances.get_mut(&id) {
                rec.lease = None;
            }
            inner.mark_ready(&id);
            released += 1;
        }
        let held: Vec<u64> = inner
            .activities
            .iter()
            .filter(|(_, a)| a.owner.as_ref() == Some(owner))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            if let Some(rec) = inner.activities.get_mut(&id) {
                rec.owner = None;
                rec.busy_until = None;
                rec.item.lease_token.clear();
            }
            inner.activity_ready.push_back(id);
            released += 1;
        }
        drop(inner);
        if released > 0 {
            self.signals.orchestrations_changed();
            self.signals.activities_changed();
        }
        Ok(released)
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
        drop(inner);
        if removed {
            self.signals.instance_changed(instance_id);
        }
        Ok(removed)
    }

    async fn purge_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        let mut inner = self.lock();
        let mut ids: Vec<String> = inner
            .instances
            .iter()
            .filter_map(|(id, r)| r.state.as_ref().map(|s| (id, s)))
            .filter(|(_, s)| s.status.is_terminal() && filter.matches(s))
            .map(|(id, _)| id.clone())
            .collect();
        // Parent-close policy: the children the purged instances take with them.
        let children = {
            let inner = &*inner;
            purged_with_parents(
                &ids,
                |level| {
                    let level: HashSet<&str> = level.iter().map(String::as_str).collect();
                    Ok::<_, StoreError>(
                        inner
                            .instances
                            .iter()
                            .filter_map(|(id, r)| {
                                let parent = r.state.as_ref()?.parent.as_ref()?;
                                level
                                    .contains(parent.instance_id.as_str())
                                    .then(|| (id.clone(), parent.instance_id.clone()))
                            })
                            .collect(),
                    )
                },
                |parent| {
                    Ok(inner
                        .instances
                        .get(parent)
                        .map(|r| r.history.clone())
                        .unwrap_or_default())
                },
            )?
        };
        ids.extend(children);
        for id in &ids {
            inner.instances.remove(id);
        }
        let set: HashSet<&String> = ids.iter().collect();
        inner
            .activities
            .retain(|_, a| !set.contains(&a.item.instance_id));
        drop(inner);
        for id in &ids {
            self.signals.instance_changed(id);
        }
        Ok(ids.len() as u64)
    }

    async fn wait_for_instance(
        &self,
        instance_id: &str,
        seen: Option<&InstanceState>,
        timeout: Duration,
    ) -> StoreResult<Option<InstanceState>> {
        self.signals
            .wait_for_instance(instance_id, seen, timeout, || {
                self.get_instance(instance_id)
            })
            .await
    }

    async fn wait_for_instance_until(
        &self,
        instance_id: &str,
        timeout: Duration,
        done: &(dyn for<'s> Fn(Option<&'s InstanceState>) -> bool + Send + Sync),
    ) -> StoreResult<Option<InstanceState>> {
        self.signals
            .wait_for_instance_until(instance_id, timeout, done, || {
                self.get_instance(instance_id)
            })
            .await
    }

    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    async fn pending_work(&self) -> StoreResult<Option<PendingWork>> {
        let now = self.now();
        let inner = self.lock();
        let orchestrations = inner
            .instances
            .values()
            .filter(|r| r.lease.as_ref().is_none_or(|l| l.expires_at <= now))
            .filter(|r| {
                r.messages
                    .iter()
                    .any(|(_, m)| m.visible_at.is_none_or(|t| t <= now))
            })
            .count();
        let activities = inner
            .activities
            .values()
            .filter(|a| a.busy_until.is_none_or(|t| t <= now))
            .count();
        Ok(Some(PendingWork {
            orchestrations: orchestrations as u64,
            activities: activities as u64,
        }))
    }

    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        Some(self)
    }
}

#[async_trait]
impl FastPaths for MemoryStore {
    async fn commit_orchestration_and_lease(
        &self,
        commit: OrchestrationCommit,
        completed: Option<&ActivityWorkItem>,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let now = self.now();
        let mut w = Wake::default();
        let leased = {
            let mut inner = self.lock();
            inner.check_lease(&commit.instance_id, &commit.lease_token)?;
            if let Some(a) = completed {
                inner.check_activity(a)?;
                inner.activities.remove(&a.id);
            }
            inner.apply_commit(commit, Some(direct), now, &mut w)?
        };
        self.wake(w, None);
        Ok(leased)
    }

    async fn commit_unleased(
        &self,
        commit: OrchestrationCommit,
        execution_id: &str,
        history_len: u64,
        completed: &ActivityWorkItem,
        direct: DirectLease<'_>,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let now = self.now();
        let mut w = Wake::default();
        let leased = {
            let mut inner = self.lock();
            inner.check_activity(completed)?;
            let rec = inner
                .instances
                .get(&commit.instance_id)
                .ok_or_else(StoreError::lease_lost)?;
            let free = rec.lease.as_ref().is_none_or(|l| l.expires_at <= now);
            let waiting = rec
                .messages
                .iter()
                .any(|(_, m)| m.visible_at.is_none_or(|t| t <= now));
            let same = rec
                .state
                .as_ref()
                .is_some_and(|s| s.execution_id == execution_id)
                && rec.history.len() as u64 == history_len;
            if !free || waiting || !same {
                return Err(StoreError::lease_lost());
            }
            inner.activities.remove(&completed.id);
            inner.apply_commit(commit, Some(direct), now, &mut w)?
        };
        self.wake(w, None);
        Ok(leased)
    }

    async fn lease_instance_for_result(
        &self,
        item: &ActivityWorkItem,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let now = self.now();
        let mut inner = self.lock();
        if inner.check_activity(item).is_err() {
            return Ok(None);
        }
        Ok(inner.lease_instance(&item.instance_id, owner, lease, now, true))
    }

    async fn complete_activity_and_fetch(
        &self,
        item: &ActivityWorkItem,
        result: OrchestrationMessage,
        owner: &WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let now = self.now();
        let mut inner = self.lock();
        let instance_id = result.instance_id.clone();
        if !inner.complete_activity(item, result, now)? {
            return Ok(None);
        }
        let work = inner.lease_instance(&instance_id, owner, lease, now, false);
        drop(inner);
        if work.is_none() {
            // Someone else holds the instance: the result waits for its next fetch.
            self.signals.orchestrations_changed();
        }
        Ok(work)
    }
}

/// Encodes a listing position as an opaque continuation token.
pub(crate) fn make_token(created_at: DateTime<Utc>, instance_id: &str) -> String {
    format!("{}|{}", created_at.timestamp_micros(), instance_id)
}

/// Decodes a continuation token made by [`make_token`].
pub(crate) fn parse_token(token: &str) -> StoreResult<(DateTime<Utc>, String)> {
    let bad = || StoreError::invalid(format!("invalid continuation token '{token}'"));
    let (micros, id) = token.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((t, id.to_string()))
}
