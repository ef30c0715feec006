//! The stored form of history: one row per episode, holding the events the episode
//! appended, in a compact self-describing encoding. In: events (and the instance's input
//! and output, which the row may refer to instead of repeating); out: the bytes of the
//! `history.events` column, and back.
//!
//! # Encoding (first byte [`COMPACT_V1`])
//! The events' serde form (the same field names and values as their JSON) written as a
//! tree of tagged values: integers as varints, strings with a length, object keys and
//! common strings (field names, event types, statuses) as one byte from [`WORDS`], and
//! timestamps as a varint difference in nanoseconds from the row's previous timestamp.
//! Being self-describing, a row written before a field was added to an event still reads
//! (the field takes its serde default), and a key not in [`WORDS`] is stored as text.
//! [`WORDS`] only ever grows at its end.
//!
//! The input of `ExecutionStarted` and the result of `ExecutionCompleted` are stored as a
//! reference to the instance row's `input` / `output` column when they are equal to it
//! (an orchestration's payloads are then stored once). The store keeps the references
//! true: a commit that changes those columns while keeping the history first writes the
//! old values into the rows that refer to them ([`materialize`]).
//!
//! Rows of SQLite schema version 5 and before (PostgreSQL: before migration 6) hold one
//! event as JSON text (a `TEXT` value; PostgreSQL: the `event` column); they are read as
//! they are.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

use crate::history::{EventKind, HistoryEvent};
use crate::store::{StoreError, StoreResult};

/// First byte of a row in this encoding.
pub(super) const COMPACT_V1: u8 = 1;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UINT: u8 = 3;
const NEG_INT: u8 = 4;
const FLOAT: u8 = 5;
const STR: u8 = 6;
const WORD: u8 = 7;
const ARRAY: u8 = 8;
const OBJECT: u8 = 9;
const TIME: u8 = 10;
const INPUT_REF: u8 = 11;
const OUTPUT_REF: u8 = 12;
/// An event object: its type (a word), its `event_id` (zigzag varint) and its timestamp
/// (as [`TIME`], without the tag), then its other fields like an object.
const EVENT: u8 = 13;

/// An object key written as text (not one of [`WORDS`]).
const LITERAL_KEY: u8 = 0xFF;

/// Strings stored as one byte. Append-only: a word's index is its stored form.
const WORDS: &[&str] = &[
    // Field names.
    "eventType",
    "event_id",
    "timestamp",
    "name",
    "version",
    "input",
    "parent",
    "trace_parent",
    "status",
    "result",
    "failure",
    "reason",
    "task_scheduled_id",
    "instance_id",
    "abandon_on_parent_close",
    "fire_at",
    "timer_id",
    "entity_id",
    "operation",
    "scheduled_time",
    "entity_ids",
    "request",
    "type",
    "reply_to",
    "lock_owner",
    "owner",
    "position",
    "execution_id",
    "error_type",
    "message",
    "details",
    "non_retriable",
    // Event types.
    "OrchestratorStarted",
    "OrchestratorCompleted",
    "ExecutionStarted",
    "ExecutionCompleted",
    "ExecutionTerminated",
    "ExecutionSuspended",
    "ExecutionResumed",
    "ExecutionRewound",
    "ContinueAsNew",
    "TaskScheduled",
    "TaskCompleted",
    "TaskFailed",
    "SubOrchestrationInstanceCreated",
    "SubOrchestrationInstanceCompleted",
    "SubOrchestrationInstanceFailed",
    "TimerCreated",
    "TimerFired",
    "EventRaised",
    "EventSent",
    "EntityOperationCalled",
    "EntityOperationSignaled",
    "EntityLockRequested",
    "EntityUnlockSent",
    "EntityOperationCompleted",
    "EntityOperationFailed",
    "EntityLockGranted",
    "EntityRequest",
    // Statuses and entity request types.
    "Pending",
    "Running",
    "Completed",
    "ContinuedAsNew",
    "Failed",
    "Canceled",
    "Terminated",
    "Suspended",
    "Operation",
    "Lock",
    "Unlock",
    // Common failure types.
    "ActivityError",
    "Panic",
    "NonDeterminism",
    "Timeout",
];

/// The longest word, so longer strings skip the lookup.
const LONGEST_WORD: usize = 33;

/// Keys whose string values are RFC 3339 timestamps.
const TIME_KEYS: [&str; 3] = ["timestamp", "fire_at", "scheduled_time"];

fn word_index() -> &'static HashMap<&'static str, u8> {
    static INDEX: OnceLock<HashMap<&'static str, u8>> = OnceLock::new();
    INDEX.get_or_init(|| {
        WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, u8::try_from(i).expect("fewer than 255 words")))
            .collect()
    })
}

/// The instance row's payloads the events may refer to instead of repeating them.
#[derive(Clone, Copy, Default)]
pub(super) struct Payloads<'a> {
    /// The instance's `input` column as it will be after the commit.
    pub input: Option<&'a str>,
    /// Its `output` column.
    pub output: Option<&'a str>,
}

/// Which payload a reference stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Payload {
    Input,
    Output,
}

impl Payload {
    /// This payload among an instance row's `input` and `output`.
    pub(super) fn of(self, input: &Option<String>, output: &Option<String>) -> Option<String> {
        match self {
            Payload::Input => input.clone(),
            Payload::Output => output.clone(),
        }
    }
}

/// Whether the history rows of `id` may refer to its instance row's payloads: not for
/// entities, whose record (the `output` column) changes with every operation.
pub(super) fn refers_to_payloads(id: &str) -> bool {
    !id.starts_with('@')
}

fn encode_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::failed(format!("cannot encode a history row: {e}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::corrupt(format!("a stored history row does not decode: {what}"))
}

/// Encodes the events of one episode. With `refs`, an `ExecutionStarted` input or an
/// `ExecutionCompleted` result equal to the instance's column becomes a reference to it.
pub(super) fn encode(events: &[HistoryEvent], refs: Payloads<'_>) -> StoreResult<Vec<u8>> {
    let mut w = Writer {
        out: Vec::with_capacity(64 * events.len() + 8),
        last_time: 0,
    };
    w.out.push(COMPACT_V1);
    w.out.push(ARRAY);
    w.varint(events.len() as u64);
    for e in events {
        let reference = match &e.kind {
            EventKind::ExecutionStarted {
                input: Some(input), ..
            } if refs.input == Some(input.as_str()) => Some(("input", INPUT_REF)),
            EventKind::ExecutionCompleted {
                result: Some(result),
                ..
            } if refs.output == Some(result.as_str()) => Some(("result", OUTPUT_REF)),
            _ => None,
        };
        // The kind's fields only: the type, id and timestamp go in the header straight
        // from the typed event (no text to format and parse back).
        let value = serde_json::to_value(&e.kind).map_err(encode_error)?;
        let Value::Object(mut map) = value else {
            return Err(encode_error("an event is not an object"));
        };
        let ty = word_index().get(e.kind.type_name());
        match (ty, e.timestamp.timestamp_nanos_opt()) {
            (Some(ty), Some(at)) => {
                w.out.push(EVENT);
                w.out.push(*ty);
                w.varint(zigzag(e.seq));
                w.time_delta(at);
                w.varint(map.len().saturating_sub(1) as u64);
                for (k, v) in &map {
                    if k != "eventType" {
                        w.entry(k, v, reference);
                    }
                }
            }
            _ => {
                map.insert("event_id".into(), e.seq.into());
                let at = serde_json::to_value(e.timestamp).map_err(encode_error)?;
                map.insert("timestamp".into(), at);
                w.event(&map, reference);
            }
        }
    }
    Ok(w.out)
}

/// The row `bytes` encoded again with its references to the instance row's payloads
/// replaced by their values (`input`, `output`), for a commit about to change them; `None`
/// when it refers to neither.
pub(super) fn without_references(
    bytes: &[u8],
    input: &Option<String>,
    output: &Option<String>,
) -> StoreResult<Option<Vec<u8>>> {
    let mut used = false;
    let mut events = Vec::new();
    decode(bytes, &mut events, &mut |which| {
        used = true;
        Ok(which.of(input, output))
    })?;
    if !used {
        return Ok(None);
    }
    encode(&events, Payloads::default()).map(Some)
}

/// Decodes a row, appending its events to `out`; references are read through `payload`.
pub(super) fn decode(
    bytes: &[u8],
    out: &mut Vec<HistoryEvent>,
    payload: &mut dyn FnMut(Payload) -> StoreResult<Option<String>>,
) -> StoreResult<()> {
    let Some((&COMPACT_V1, rest)) = bytes.split_first() else {
        return Err(corrupt("unknown format"));
    };
    let mut r = Reader {
        bytes: rest,
        last_time: 0,
        payload,
    };
    let Value::Array(events) = r.value(0)? else {
        return Err(corrupt("not a list of events"));
    };
    if !r.bytes.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    out.reserve(events.len());
    for e in events {
        out.push(serde_json::from_value(e).map_err(|e| {
            StoreError::corrupt("a stored history event does not decode").with_source(e)
        })?);
    }
    Ok(())
}

struct Writer {
    out: Vec<u8>,
    last_time: i64,
}

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn text(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// An event: its type, id and timestamp in the [`EVENT`] header when they have their
    /// usual form, else the event as a plain object.
    fn event(&mut self, map: &Map<String, Value>, reference: Option<(&str, u8)>) {
        let ty = map
            .get("eventType")
            .and_then(Value::as_str)
            .and_then(|t| word_index().get(t));
        let id = map.get("event_id").and_then(Value::as_i64);
        let at = map.get("timestamp").and_then(time_nanos);
        let (Some(ty), Some(id), Some(at)) = (ty, id, at) else {
            return self.object(map, reference);
        };
        self.out.push(EVENT);
        self.out.push(*ty);
        self.varint(zigzag(id));
        self.time_delta(at);
        self.varint(map.len() as u64 - 3);
        for (k, v) in map {
            if !matches!(k.as_str(), "eventType" | "event_id" | "timestamp") {
                self.entry(k, v, reference);
            }
        }
    }

    fn object(&mut self, map: &Map<String, Value>, reference: Option<(&str, u8)>) {
        self.out.push(OBJECT);
        self.varint(map.len() as u64);
        for (k, v) in map {
            self.entry(k, v, reference);
        }
    }

    fn entry(&mut self, k: &str, v: &Value, reference: Option<(&str, u8)>) {
        match word_index().get(k) {
            Some(i) => self.out.push(*i),
            None => {
                self.out.push(LITERAL_KEY);
                self.text(k);
            }
        }
        match reference {
            Some((key, tag)) if key == k => self.out.push(tag),
            _ if TIME_KEYS.contains(&k) => match time_nanos(v) {
                Some(nanos) => {
                    self.out.push(TIME);
                    self.time_delta(nanos);
                }
                None => self.value(v),
            },
            _ => self.value(v),
        }
    }

    /// A timestamp as a difference from the row's previous one.
    fn time_delta(&mut self, nanos: i64) {
        self.varint(zigzag(nanos.wrapping_sub(self.last_time)));
        self.last_time = nanos;
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.out.push(NULL),
            Value::Bool(false) => self.out.push(FALSE),
            Value::Bool(true) => self.out.push(TRUE),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.out.push(UINT);
                    self.varint(u);
                } else if let Some(i) = n.as_i64() {
                    self.out.push(NEG_INT);
                    // i < 0: -1 is 0, -2 is 1, ...
                    self.varint(!(i as u64));
                } else {
                    self.out.push(FLOAT);
                    let f = n.as_f64().unwrap_or_default();
                    self.out.extend_from_slice(&f.to_le_bytes());
                }
            }
            Value::String(s) => {
                let word = (s.len() <= LONGEST_WORD)
                    .then(|| word_index().get(s.as_str()))
                    .flatten();
                match word {
                    Some(i) => {
                        self.out.push(WORD);
                        self.out.push(*i);
                    }
                    None => {
                        self.out.push(STR);
                        self.text(s);
                    }
                }
            }
            Value::Array(items) => {
                self.out.push(ARRAY);
                self.varint(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.object(map, None),
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// A timestamp in nanoseconds, when `v` is the exact text its serde form gives back (so
/// the text is rebuilt exactly from the number).
fn time_nanos(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true) == s)
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Nesting deeper than this is refused (a stored value is never that deep; a damaged row
/// must not overflow the stack).
const MAX_DEPTH: usize = 64;

struct Reader<'a, 'p> {
    bytes: &'a [u8],
    last_time: i64,
    payload: &'p mut dyn FnMut(Payload) -> StoreResult<Option<String>>,
}

impl Reader<'_, '_> {
    fn byte(&mut self) -> StoreResult<u8> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| corrupt("truncated"))?;
        self.bytes = rest;
        Ok(b)
    }

    fn varint(&mut self) -> StoreResult<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("an integer is too long"))
    }

    fn len(&mut self) -> StoreResult<usize> {
        let n = usize::try_from(self.varint()?).map_err(|_| corrupt("a length is too large"))?;
        if n > self.bytes.len() {
            return Err(corrupt("a length runs past the row"));
        }
        Ok(n)
    }

    fn text(&mut self) -> StoreResult<String> {
        let n = self.len()?;
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("a string is not UTF-8"))
    }

    fn word(&mut self) -> StoreResult<&'static str> {
        let i = self.byte()?;
        WORDS
            .get(usize::from(i))
            .copied()
            .ok_or_else(|| corrupt("an unknown word"))
    }

    fn value(&mut self, depth: usize) -> StoreResult<Value> {
        if depth > MAX_DEPTH {
            return Err(corrupt("nested too deeply"));
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.varint()?.into()),
            NEG_INT => Value::Number(Number::from(!self.varint()? as i64)),
            FLOAT => {
                if self.bytes.len() < 8 {
                    return Err(corrupt("truncated"));
                }
                let (f, rest) = self.bytes.split_at(8);
                self.bytes = rest;
                let f = f64::from_le_bytes(f.try_into().map_err(|_| corrupt("truncated"))?);
                Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            STR => Value::String(self.text()?),
            WORD => Value::String(self.word()?.to_string()),
            ARRAY => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let mut map = Map::new();
                self.entries(&mut map, depth)?;
                Value::Object(map)
            }
            TIME => self.time()?,
            EVENT => {
                let ty = self.word()?;
                let id = unzigzag(self.varint()?);
                let at = self.time()?;
                let mut map = Map::new();
                map.insert("eventType".into(), Value::String(ty.to_string()));
                map.insert("event_id".into(), Value::Number(id.into()));
                map.insert("timestamp".into(), at);
                self.entries(&mut map, depth)?;
                Value::Object(map)
            }
            INPUT_REF => self.reference(Payload::Input)?,
            OUTPUT_REF => self.reference(Payload::Output)?,
            _ => return Err(corrupt("an unknown tag")),
        })
    }

    /// A count, then that many keys and values.
    fn entries(&mut self, map: &mut Map<String, Value>, depth: usize) -> StoreResult<()> {
        let n = self.len()?;
        for _ in 0..n {
            let key = match self.byte()? {
                LITERAL_KEY => self.text()?,
                i => WORDS
                    .get(usize::from(i))
                    .ok_or_else(|| corrupt("an unknown key"))?
                    .to_string(),
            };
            let v = self.value(depth + 1)?;
            map.insert(key, v);
        }
        Ok(())
    }

    fn time(&mut self) -> StoreResult<Value> {
        let nanos = self.last_time.wrapping_add(unzigzag(self.varint()?));
        self.last_time = nanos;
        let t = DateTime::<Utc>::from_timestamp_nanos(nanos);
        Ok(Value::String(
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ))
    }

    fn reference(&mut self, which: Payload) -> StoreResult<Value> {
        match (self.payload)(which)? {
            Some(s) => Ok(Value::String(s)),
            None => Err(corrupt(
                "it refers to an instance payload that is not stored",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FailureDetails, ParentInstance, RuntimeStatus};

    fn events() -> Vec<HistoryEvent> {
        let t = DateTime::parse_from_rfc3339("2026-12-03T09:19:03.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let later = t + chrono::Duration::microseconds(1500);
        vec![
            HistoryEvent::new(t, EventKind::OrchestratorStarted),
            HistoryEvent::new(
                t,
                EventKind::ExecutionStarted {
                    name: "hello".into(),
                    version: Some("2".into()),
                    input: Some("\"in\"".into()),
                    parent: Some(ParentInstance {
                        instance_id: "p".into(),
                        execution_id: "e".into(),
                        seq: 7,
                        name: "parent".into(),
                    }),
                    trace_parent: None,
                },
            ),
            HistoryEvent::scheduled(
                0,
                later,
                EventKind::TaskScheduled {
                    name: "act".into(),
                    input: Some("{\"a\":[1,-2,3.5,null,true]}".into()),
                    options: crate::history::TaskOptions::of(
                        2,
                        Some(std::time::Duration::from_millis(5)),
                        None,
                    ),
                },
            ),
            HistoryEvent::new(
                later,
                EventKind::TimerCreated {
                    fire_at: DateTime::<Utc>::MIN_UTC,
                },
            ),
            HistoryEvent::new(
                t - chrono::Duration::seconds(5),
                EventKind::TaskFailed {
                    seq: u64::MAX,
                    failure: FailureDetails {
                        error_type: "Custom".into(),
                        message: "ünïcode".into(),
                        details: Some(String::new()),
                        non_retriable: true,
                    },
                },
            ),
            HistoryEvent::new(
                later,
                EventKind::ExecutionCompleted {
                    status: RuntimeStatus::Completed,
                    result: Some("[\"out\"]".into()),
                    failure: None,
                },
            ),
            HistoryEvent::new(later, EventKind::OrchestratorCompleted),
        ]
    }

    fn no_payloads(_: Payload) -> StoreResult<Option<String>> {
        panic!("no reference expected")
    }

    #[test]
    fn events_round_trip() {
        let events = events();
        let bytes = encode(&events, Payloads::default()).unwrap();
        let mut back = Vec::new();
        decode(&bytes, &mut back, &mut no_payloads).unwrap();
        assert_eq!(back, events);
        let json: usize = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap().len())
            .sum();
        assert!(bytes.len() * 2 < json, "{} against {json}", bytes.len());
    }

    #[test]
    fn equal_payloads_are_references() {
        let events = events();
        let refs = Payloads {
            input: Some("\"in\""),
            output: Some("[\"out\"]"),
        };
        let bytes = encode(&events, refs).unwrap();
        let mut asked = Vec::new();
        let mut back = Vec::new();
        decode(&bytes, &mut back, &mut |which| {
            asked.push(which);
            Ok(Some(match which {
                Payload::Input => "\"in\"".into(),
                Payload::Output => "[\"out\"]".into(),
            }))
        })
        .unwrap();
        assert_eq!(back, events);
        assert_eq!(asked, vec![Payload::Input, Payload::Output]);
        // A different payload is stored in the row.
        let other = encode(
            &events,
            Payloads {
                input: Some("\"other\""),
                output: None,
            },
        )
        .unwrap();
        let mut back = Vec::new();
        decode(&other, &mut back, &mut no_payloads).unwrap();
        assert_eq!(back, events);
    }

    /// A row written before an event gained an optional field reads with the field's
    /// default; a field the build does not know is ignored.
    #[test]
    fn rows_of_other_versions_decode() {
        let mut old = serde_json::Map::new();
        old.insert("eventType".into(), "ExecutionStarted".into());
        old.insert("event_id".into(), (-1).into());
        old.insert("timestamp".into(), "2026-01-01T00:00:00Z".into());
        old.insert("name".into(), "n".into());
        old.insert("input".into(), Value::Null);
        old.insert("a_field_from_a_later_version".into(), 42.into());
        let mut w = Writer {
            out: vec![COMPACT_V1, ARRAY, 1],
            last_time: 0,
        };
        w.object(&old, None);
        w.out[2] = 2;
        w.event(&old, None);
        let mut back = Vec::new();
        decode(&w.out, &mut back, &mut no_payloads).unwrap();
        assert_eq!(back[0], back[1], "as an object and with the event header");
        assert_eq!(
            back[0].kind,
            EventKind::ExecutionStarted {
                name: "n".into(),
                version: None,
                input: None,
                parent: None,
                trace_parent: None,
            }
        );
    }

    #[test]
    fn damaged_rows_are_errors() {
        let bytes = encode(&events(), Payloads::default()).unwrap();
        for cut in 0..bytes.len() {
            let mut back = Vec::new();
            assert!(decode(&bytes[..cut], &mut back, &mut no_payloads).is_err());
        }
        let mut back = Vec::new();
        assert!(decode(&[COMPACT_V1, 0xEE], &mut back, &mut no_payloads).is_err());
        let deep: Vec<u8> = std::iter::once(COMPACT_V1)
            .chain(std::iter::repeat_n([ARRAY, 1], 10_000).flatten())
            .collect();
        assert!(decode(&deep, &mut back, &mut no_payloads).is_err());
    }
}
