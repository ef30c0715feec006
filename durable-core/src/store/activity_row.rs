//! The stored JSON form of an activity work item, shared by the SQL stores (SQLite and
//! PostgreSQL keep it in the `item` column of their `activities` table; the lease, the
//! hand-out count and the latest heartbeat details live in columns of their own). Fields
//! added after the first release are optional with serde defaults, so rows written by an
//! older build still read.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{ActivityHeartbeat, ActivityWorkItem};

/// The stored form of an activity work item (lease fields live in their own columns).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ActivityRow {
    pub execution_id: String,
    pub seq: u64,
    pub name: String,
    pub input: Option<String>,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// When the store stored the item (its clock, Unix microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at_us: Option<i64>,
}

/// A duration as whole microseconds, saturating.
fn whole_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl From<&ActivityWorkItem> for ActivityRow {
    fn from(a: &ActivityWorkItem) -> Self {
        Self {
            execution_id: a.execution_id.clone(),
            seq: a.seq,
            name: a.name.clone(),
            input: a.input.clone(),
            attempt: a.attempt,
            start_to_close_us: a.start_to_close.map(whole_micros),
            heartbeat_timeout_us: a.heartbeat_timeout.map(whole_micros),
            heartbeat_details: a.heartbeat_details.clone(),
            trace_parent: a.trace_parent.clone(),
            scheduled_at_us: a.scheduled_at.map(|t| t.timestamp_micros()),
        }
    }
}

/// What a stored row's own columns add to its `item`.
pub(crate) struct RowColumns {
    /// The row id.
    pub id: u64,
    /// The instance waiting for the result.
    pub instance_id: String,
    /// The lease token of this hand-out.
    pub lease_token: String,
    /// The hand-outs so far, this one included.
    pub dequeue_count: u32,
    /// The latest heartbeat details a lease renewal stored, if any.
    pub heartbeat_details: Option<String>,
}

impl ActivityRow {
    /// The row of `a` as a store stores it at `now` (its clock).
    pub(crate) fn scheduled(a: &ActivityWorkItem, now: DateTime<Utc>) -> Self {
        Self {
            scheduled_at_us: Some(now.timestamp_micros()),
            ..Self::from(a)
        }
    }

    /// The work item this row and its columns make. The latest heartbeat details of an
    /// earlier hand-out win over those the item was scheduled with.
    pub(crate) fn into_item(self, cols: RowColumns) -> ActivityWorkItem {
        ActivityWorkItem {
            id: cols.id,
            instance_id: cols.instance_id,
            execution_id: self.execution_id,
            seq: self.seq,
            name: self.name,
            input: self.input,
            attempt: self.attempt,
            lease_token: cols.lease_token,
            dequeue_count: cols.dequeue_count,
            start_to_close: self.start_to_close_us.map(Duration::from_micros),
            heartbeat_timeout: self.heartbeat_timeout_us.map(Duration::from_micros),
            heartbeat_details: cols.heartbeat_details.or(self.heartbeat_details),
            trace_parent: self.trace_parent,
            scheduled_at: self
                .scheduled_at_us
                .and_then(DateTime::<Utc>::from_timestamp_micros),
        }
    }
}

/// The activities with heartbeat details among `rows` (each a stored item with the details
/// of its heartbeat column, which win over those carried in the item), by sequence.
pub(crate) fn heartbeats(
    rows: impl IntoIterator<Item = (ActivityRow, Option<String>)>,
) -> Vec<ActivityHeartbeat> {
    let mut out: Vec<ActivityHeartbeat> = rows
        .into_iter()
        .filter_map(|(row, beat)| {
            let details = beat.or(row.heartbeat_details)?;
            Some(ActivityHeartbeat {
                name: row.name,
                seq: row.seq,
                attempt: row.attempt,
                details,
            })
        })
        .collect();
    out.sort_by_key(|h| h.seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> ActivityWorkItem {
        ActivityWorkItem {
            id: 7,
            instance_id: "i".into(),
            execution_id: "e".into(),
            seq: 3,
            name: "Work".into(),
            input: Some("\"x\"".into()),
            attempt: 2,
            lease_token: "t".into(),
            dequeue_count: 1,
            start_to_close: Some(Duration::from_millis(1500)),
            heartbeat_timeout: None,
            heartbeat_details: Some("5".into()),
            trace_parent: None,
            scheduled_at: None,
        }
    }

    /// The columns of a row handed out `dequeue_count` times.
    fn columns(dequeue_count: u32, heartbeat_details: Option<&str>) -> RowColumns {
        RowColumns {
            id: 7,
            instance_id: "i".into(),
            lease_token: "t".into(),
            dequeue_count,
            heartbeat_details: heartbeat_details.map(Into::into),
        }
    }

    #[test]
    fn stored_form_is_stable() {
        // The exact bytes rows were stored with before the form was shared: unchanged.
        let json = serde_json::to_string(&ActivityRow::from(&item())).unwrap();
        assert_eq!(
            json,
            r#"{"execution_id":"e","seq":3,"name":"Work","input":"\"x\"","attempt":2,"start_to_close_us":1500000,"heartbeat_details":"5"}"#
        );
    }

    #[test]
    fn round_trips_with_columns() {
        let json = serde_json::to_string(&ActivityRow::from(&item())).unwrap();
        let row: ActivityRow = serde_json::from_str(&json).unwrap();
        let back = row.into_item(columns(1, None));
        assert_eq!(back, item());
        // A renewal's details win over the scheduled ones.
        let row: ActivityRow = serde_json::from_str(&json).unwrap();
        let back = row.into_item(columns(2, Some("9")));
        assert_eq!(back.heartbeat_details.as_deref(), Some("9"));
    }

    #[test]
    fn scheduled_rows_carry_their_time() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let json = serde_json::to_string(&ActivityRow::scheduled(&item(), at)).unwrap();
        assert!(
            json.ends_with(r#","scheduled_at_us":1700000000123456}"#),
            "{json}"
        );
        let row: ActivityRow = serde_json::from_str(&json).unwrap();
        let back = row.into_item(columns(1, None));
        assert_eq!(back.scheduled_at, Some(at));
    }

    #[test]
    fn rows_of_the_first_release_read() {
        let row: ActivityRow = serde_json::from_str(
            r#"{"execution_id":"e","seq":1,"name":"Work","input":null,"attempt":1}"#,
        )
        .unwrap();
        assert_eq!(row.start_to_close_us, None);
        assert_eq!(row.trace_parent, None);
        assert_eq!(row.scheduled_at_us, None);
    }
}
