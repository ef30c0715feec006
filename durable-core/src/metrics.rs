//! The worker's metrics, as Prometheus instruments ([`prometheus_client`]): instances
//! started and finished by orchestrator, episodes and replays, activity executions and
//! their durations, schedule-to-start delays, store commit latency and batch size, leases
//! held and pending work.
//!
//! Every [`Worker`](crate::Worker) records into a [`Metrics`] (its own unless one is
//! given with [`WorkerBuilder::metrics`](crate::WorkerBuilder::metrics)); register it in a
//! [`Registry`] to export it. Labels are bounded: orchestrator and activity names are
//! those of the registry (a name the registry does not know is recorded as
//! `unregistered`), the other labels take a fixed set of values.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `durable_instances_started_total` | counter | `orchestrator` |
//! | `durable_instances_finished_total` | counter | `orchestrator`, `status` (`completed`, `failed`, `terminated`, `continued_as_new`) |
//! | `durable_episodes_total` | counter | `kind` (`orchestration`, `entity`), `source` (`new`, `cached`, `replayed`) |
//! | `durable_replayed_events_total` | counter | |
//! | `durable_activity_executions_total` | counter | `activity`, `outcome` (`completed`, `failed`) |
//! | `durable_activity_duration_seconds` | histogram | `activity`, `outcome` |
//! | `durable_schedule_to_start_seconds` | histogram | `kind` (`orchestration`, `activity`) |
//! | `durable_store_commit_duration_seconds` | histogram | `op` (`episode`, `activity_result`) |
//! | `durable_store_commit_batch_size` | histogram | |
//! | `durable_leases_held` | gauge | `kind` (`orchestration`, `activity`) |
//! | `durable_pending_work_items` | gauge | `kind` (`orchestration`, `activity`) |

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The Prometheus client these metrics are built with, to register more in the same
/// [`Registry`] or encode it.
pub use prometheus_client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::registry::Registry;

use crate::history::{EventKind, HistoryEvent, HistoryUpdate};
use crate::instance::RuntimeStatus;
use crate::registry::Registry as FunctionRegistry;
use crate::replay::Source;
use crate::store::{ActivityWorkItem, OrchestrationCommit, OrchestrationWorkItem};

/// The label value for a name the registry does not know.
pub const UNREGISTERED: &str = "unregistered";

/// What a work item is: an orchestration (or entity) work item or an activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkKind {
    /// An orchestration or entity work item.
    Orchestration,
    /// An activity work item.
    Activity,
}

impl WorkKind {
    fn label(self) -> &'static str {
        match self {
            WorkKind::Orchestration => "orchestration",
            WorkKind::Activity => "activity",
        }
    }
}

/// Where an episode's execution came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpisodeSource {
    /// A new execution: nothing to replay.
    New,
    /// The live execution kept in the instance cache.
    Cached,
    /// Rebuilt by replaying the stored history.
    Replayed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrchestratorLabels {
    orchestrator: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    orchestrator: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EpisodeLabels {
    kind: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActivityLabels {
    activity: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Histogram buckets, as a constructor a [`Family`] can call.
#[derive(Clone, Copy, Debug)]
struct Buckets {
    start: f64,
    factor: f64,
    count: u16,
}

impl Buckets {
    /// 1 ms to about 4.4 minutes: activities, schedule-to-start delays.
    const LONG: Buckets = Buckets {
        start: 0.001,
        factor: 4.0,
        count: 10,
    };
    /// 0.1 ms to about 3.3 s: store commits.
    const SHORT: Buckets = Buckets {
        start: 0.0001,
        factor: 2.0,
        count: 16,
    };
    /// 1 to 1024 messages.
    const COUNT: Buckets = Buckets {
        start: 1.0,
        factor: 2.0,
        count: 11,
    };

    fn histogram(self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        self.histogram()
    }
}

/// The worker's instruments. Cheap to clone: clones share the same values.
#[derive(Clone, Debug)]
pub struct Metrics {
    started: Family<OrchestratorLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    episodes: Family<EpisodeLabels, Counter>,
    replayed_events: Counter,
    activities: Family<ActivityLabels, Counter>,
    activity_duration: Family<ActivityLabels, Histogram, Buckets>,
    schedule_to_start: Family<KindLabels, Histogram, Buckets>,
    commit_duration: Family<OpLabels, Histogram, Buckets>,
    commit_batch: Histogram,
    leases: Family<KindLabels, Gauge>,
    pending: Family<KindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// New instruments, all at zero.
    pub fn new() -> Self {
        Metrics {
            started: Family::default(),
            finished: Family::default(),
            episodes: Family::default(),
            replayed_events: Counter::default(),
            activities: Family::default(),
            activity_duration: Family::new_with_constructor(Buckets::LONG),
            schedule_to_start: Family::new_with_constructor(Buckets::LONG),
            commit_duration: Family::new_with_constructor(Buckets::SHORT),
            commit_batch: Buckets::COUNT.histogram(),
            leases: Family::default(),
            pending: Family::default(),
        }
    }

    /// Registers every instrument in `registry` (the names carry a `durable_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("durable");
        r.register(
            "instances_started",
            "Orchestration executions started (continue-as-new starts a new one), by orchestrator",
            self.started.clone(),
        );
        r.register(
            "instances_finished",
            "Orchestration executions finished, by orchestrator and final status",
            self.finished.clone(),
        );
        r.register(
            "episodes",
            "Episodes run, by kind and by where their execution came from",
            self.episodes.clone(),
        );
        r.register(
            "replayed_events",
            "History events replayed to rebuild executions not in the cache",
            self.replayed_events.clone(),
        );
        r.register(
            "activity_executions",
            "Activity executions, by activity and outcome",
            self.activities.clone(),
        );
        r.register(
            "activity_duration_seconds",
            "How long activity executions ran, by activity and outcome",
            self.activity_duration.clone(),
        );
        r.register(
            "schedule_to_start_seconds",
            "Delay from a work item becoming due to the worker starting it",
            self.schedule_to_start.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Latency of store commits, by operation",
            self.commit_duration.clone(),
        );
        r.register(
            "store_commit_batch_size",
            "Messages consumed by one episode commit",
            self.commit_batch.clone(),
        );
        r.register(
            "leases_held",
            "Work items this worker holds under a lease now",
            self.leases.clone(),
        );
        r.register(
            "pending_work_items",
            "Work items due and waiting in the store, as last read from it",
            self.pending.clone(),
        );
    }

    /// Notes what an episode's commit records before it is sent: when it started, the
    /// messages it consumes and the executions it starts and finishes (from the
    /// `ExecutionStarted` and `ExecutionCompleted` events it appends). Pass the result to
    /// [`committed`](Self::committed) once the store took it.
    pub(crate) fn episode_commit(
        &self,
        registry: &FunctionRegistry,
        commit: &OrchestrationCommit,
    ) -> PendingCommit {
        let mut pending = PendingCommit {
            started: Instant::now(),
            consumed: commit.consumed.len(),
            executions_started: Vec::new(),
            executions_finished: Vec::new(),
        };
        if crate::entity::is_entity_instance(&commit.instance_id) {
            return pending;
        }
        let events: &[HistoryEvent] = match &commit.history {
            HistoryUpdate::Append(e) | HistoryUpdate::Replace(e) => e,
        };
        let mut name = commit.state.as_ref().map(|s| s.name.as_str());
        for ev in events {
            match &ev.kind {
                EventKind::ExecutionStarted { name: started, .. } => {
                    name = name.or(Some(started));
                    pending
                        .executions_started
                        .push(orchestrator_label(registry, started));
                }
                EventKind::ExecutionCompleted { status, .. } => {
                    let status = match status {
                        RuntimeStatus::Completed => "completed",
                        RuntimeStatus::Failed => "failed",
                        RuntimeStatus::Terminated => "terminated",
                        RuntimeStatus::ContinuedAsNew => "continued_as_new",
                        _ => continue,
                    };
                    let orchestrator = orchestrator_label(registry, name.unwrap_or_default());
                    pending.executions_finished.push(FinishedLabels {
                        orchestrator,
                        status,
                    });
                }
                _ => {}
            }
        }
        pending
    }

    /// Records an episode commit the store took: its latency, its batch and the
    /// executions it started and finished.
    pub(crate) fn committed(&self, pending: PendingCommit) {
        self.commit(
            CommitOp::Episode,
            pending.started.elapsed(),
            pending.consumed,
        );
        for orchestrator in pending.executions_started {
            self.started
                .get_or_create(&OrchestratorLabels { orchestrator })
                .inc();
        }
        for labels in pending.executions_finished {
            self.finished.get_or_create(&labels).inc();
        }
    }

    /// Records an episode commit the store refused: its latency only.
    pub(crate) fn commit_failed(&self, pending: PendingCommit) {
        self.commit(
            CommitOp::Episode,
            pending.started.elapsed(),
            pending.consumed,
        );
    }

    /// Records the work item an episode starts on: the delay since its oldest message
    /// became due, and a lease held while the returned guard lives (none for an item
    /// run without a lease).
    pub(crate) fn orchestration_item(
        &self,
        item: &OrchestrationWorkItem,
        now: DateTime<Utc>,
    ) -> Option<LeaseGuard> {
        let due = item
            .messages
            .iter()
            .map(|(_, m)| m.visible_at.unwrap_or(m.event.timestamp))
            .min();
        if let Some(due) = due {
            let delay = (now - due).to_std().unwrap_or(Duration::ZERO);
            self.schedule_to_start(WorkKind::Orchestration, delay);
        }
        (!item.lease_token.is_empty()).then(|| self.lease_held(WorkKind::Orchestration))
    }

    /// Records an episode run on `source` (`None`: a new execution or an entity batch).
    pub(crate) fn episode_source(&self, entity: bool, source: Option<&Source>) {
        match source {
            None => self.episode(entity, EpisodeSource::New, 0),
            Some(Source::Cached(_)) => self.episode(entity, EpisodeSource::Cached, 0),
            Some(Source::History(h)) => self.episode(entity, EpisodeSource::Replayed, h.len()),
        }
    }

    /// Records an episode; `replayed_events` is the history length replayed for it.
    pub(crate) fn episode(&self, entity: bool, source: EpisodeSource, replayed_events: usize) {
        let labels = EpisodeLabels {
            kind: if entity { "entity" } else { "orchestration" },
            source: match source {
                EpisodeSource::New => "new",
                EpisodeSource::Cached => "cached",
                EpisodeSource::Replayed => "replayed",
            },
        };
        self.episodes.get_or_create(&labels).inc();
        if replayed_events > 0 {
            self.replayed_events
                .inc_by(u64::try_from(replayed_events).unwrap_or(u64::MAX));
        }
    }

    /// Records an activity execution: its outcome and how long it ran.
    pub(crate) fn activity(
        &self,
        registry: &FunctionRegistry,
        name: &str,
        ok: bool,
        took: Duration,
    ) {
        let labels = ActivityLabels {
            activity: if registry.activity(name).is_some() {
                name.to_string()
            } else {
                UNREGISTERED.to_string()
            },
            outcome: if ok { "completed" } else { "failed" },
        };
        self.activities.get_or_create(&labels).inc();
        self.activity_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records the delay between a work item becoming due and its start.
    pub(crate) fn schedule_to_start(&self, kind: WorkKind, delay: Duration) {
        self.schedule_to_start
            .get_or_create(&KindLabels { kind: kind.label() })
            .observe(delay.as_secs_f64());
    }

    /// Records a store commit's latency; for an episode, with the messages it consumed.
    pub(crate) fn commit(&self, op: CommitOp, took: Duration, consumed: usize) {
        let op = match op {
            CommitOp::Episode => "episode",
            CommitOp::ActivityResult => "activity_result",
        };
        self.commit_duration
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
        if op == "episode" {
            self.commit_batch.observe(consumed as f64);
        }
    }

    /// Counts a lease held until the returned guard is dropped.
    pub(crate) fn lease_held(&self, kind: WorkKind) -> LeaseGuard {
        let gauge = self
            .leases
            .get_or_create(&KindLabels { kind: kind.label() })
            .clone();
        gauge.inc();
        LeaseGuard(gauge)
    }

    /// Records the activity work item an attempt starts on: the delay since the store
    /// stored it (when it says), and its lease held while the returned guard lives.
    pub(crate) fn activity_item(&self, item: &ActivityWorkItem, now: DateTime<Utc>) -> LeaseGuard {
        if let Some(at) = item.scheduled_at {
            let delay = (now - at).to_std().unwrap_or(Duration::ZERO);
            self.schedule_to_start(WorkKind::Activity, delay);
        }
        self.lease_held(WorkKind::Activity)
    }

    /// Sets the number of work items due and waiting in the store.
    pub fn set_pending(&self, kind: WorkKind, n: u64) {
        self.pending
            .get_or_create(&KindLabels { kind: kind.label() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The number of work items of this kind held under a lease now.
    pub fn leases_held(&self, kind: WorkKind) -> i64 {
        self.leases
            .get(&KindLabels { kind: kind.label() })
            .map_or(0, |g| g.get())
    }
}

/// A store commit, for its latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitOp {
    /// An episode's commit.
    Episode,
    /// Recording an activity's result.
    ActivityResult,
}

/// An episode commit on its way to the store, for [`Metrics::committed`].
#[derive(Debug)]
pub(crate) struct PendingCommit {
    started: Instant,
    consumed: usize,
    executions_started: Vec<String>,
    executions_finished: Vec<FinishedLabels>,
}

/// Decrements the leases-held gauge when dropped.
#[derive(Debug)]
pub(crate) struct LeaseGuard(Gauge);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn orchestrator_label(registry: &FunctionRegistry, name: &str) -> String {
    if registry.orchestrator(name, None).is_some() {
        name.to_string()
    } else {
        UNREGISTERED.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn names_are_bounded_by_the_registry() {
        let registry = FunctionRegistry::builder()
            .activity("known", |_ctx, _: ()| async { Ok::<(), String>(()) })
            .build()
            .unwrap();
        let m = Metrics::new();
        m.activity(&registry, "known", true, Duration::from_millis(3));
        m.activity(&registry, "made-up-name", false, Duration::from_millis(3));
        let out = text(&m);
        assert!(
            out.contains(
                r#"durable_activity_executions_total{activity="known",outcome="completed"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"durable_activity_executions_total{activity="unregistered",outcome="failed"} 1"#
            ),
            "{out}"
        );
        assert!(!out.contains("made-up-name"), "{out}");
    }

    #[test]
    fn lease_guards_count_down() {
        let m = Metrics::new();
        let a = m.lease_held(WorkKind::Activity);
        let b = m.lease_held(WorkKind::Activity);
        assert_eq!(m.leases_held(WorkKind::Activity), 2);
        drop(a);
        assert_eq!(m.leases_held(WorkKind::Activity), 1);
        drop(b);
        assert_eq!(m.leases_held(WorkKind::Activity), 0);
        assert!(text(&m).contains(r#"durable_leases_held{kind="activity"} 0"#));
    }
}
