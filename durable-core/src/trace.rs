//! W3C trace context (`traceparent`) for instances: a start request's trace becomes the
//! parent of the instance's spans (episodes, activities, entity operations, `call_http`
//! requests), on whichever host runs them.
//!
//! The trace context is kept with the instance (in its `ExecutionStarted` event, on the
//! activities and entity operations it schedules), so replays and later episodes on any
//! host continue the same trace. Each span records the trace id in a `trace_id` field;
//! with the cargo feature `otel`, the spans also get the trace context as their
//! OpenTelemetry parent (through `tracing-opentelemetry`'s layer, which the application
//! installs with the exporter of its choice).
//!
//! A start takes the trace context from [`StartOptions::trace_parent`], else from the
//! [`scope`] it runs in (the HTTP host runs each request in the scope of its
//! `traceparent` header). Headers are parsed strictly ([`TraceParent::parse`]); a malformed
//! one is ignored.
//!
//! [`StartOptions::trace_parent`]: crate::StartOptions::trace_parent

use std::fmt;
use std::future::Future;

/// A W3C `traceparent`: trace id, parent span id and trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

/// `00-<trace id>-<parent id>-<flags>` in lowercase hex.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

impl std::str::FromStr for TraceParent {
    type Err = InvalidTraceParent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s).ok_or(InvalidTraceParent)
    }
}

/// A `traceparent` value that is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTraceParent;

impl fmt::Display for InvalidTraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
    }
}

impl std::error::Error for InvalidTraceParent {}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lowercase hex digits to bytes; anything else (uppercase included, as the W3C format
/// requires) is `None`.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// A trace context from its parts; `None` when the trace id or the parent id is all
    /// zeros (invalid in W3C trace context).
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Parses a `traceparent` header value strictly: version `00` is exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>` in lowercase; a later version (not `ff`) may carry
    /// more after a `-`, which is ignored; ids of all zeros are invalid. Surrounding
    /// spaces and tabs are allowed. Anything else is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < 55 || v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') {
            return None;
        }
        if v.get(52) != Some(&b'-') {
            return None;
        }
        let [version] = unhex::<1>(v.get(..2)?)?;
        match (version, v.len()) {
            (0xff, _) => return None,
            (0, 55) => {}
            (0, _) => return None,
            (_, 55) => {}
            (_, _) if v.get(55) == Some(&b'-') => {}
            _ => return None,
        }
        let trace_id = unhex::<16>(v.get(3..35)?)?;
        let parent_id = unhex::<8>(v.get(36..52)?)?;
        let [flags] = unhex::<1>(v.get(53..55)?)?;
        TraceParent::new(trace_id, parent_id, flags)
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent span id, 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        hex(&self.parent_id)
    }

    /// The trace id's bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The parent span id's bytes.
    pub fn parent_id_bytes(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The same trace with a new random parent id: what to send on for a request made
    /// from a span that has no id of its own.
    pub fn child(&self) -> TraceParent {
        loop {
            let bytes = uuid::Uuid::new_v4().into_bytes();
            let mut id = [0u8; 8];
            id.copy_from_slice(&bytes[..8]);
            if let Some(t) = TraceParent::new(self.trace_id, id, self.flags) {
                return t;
            }
        }
    }
}

tokio::task_local! {
    static SCOPE: Option<TraceParent>;
}

/// Runs `fut` with `parent` as the trace context of the starts it makes (those whose
/// [`StartOptions::trace_parent`](crate::StartOptions::trace_parent) is not set). The
/// future is a named type, so a tower layer can hold it without boxing.
pub fn scope<F: Future>(
    parent: Option<TraceParent>,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Option<TraceParent>, F> {
    SCOPE.scope(parent, fut)
}

/// The trace context of the current [`scope`], if any.
pub fn current() -> Option<TraceParent> {
    SCOPE.try_with(|p| *p).ok().flatten()
}

/// Makes `parent` the parent of `span`: records its trace id in the span's `trace_id`
/// field and, with the `otel` feature, sets it as the span's OpenTelemetry parent. Call
/// it before the span is first entered.
pub fn attach(span: &tracing::Span, parent: Option<&TraceParent>) {
    let Some(parent) = parent else {
        return;
    };
    span.record("trace_id", tracing::field::display(parent.trace_id()));
    #[cfg(feature = "otel")]
    otel::set_parent(span, parent);
}

/// The `traceparent` to send on with a request made inside `span`, a child of `parent`:
/// with the `otel` feature, `span`'s own OpenTelemetry span id when it has one; else a new
/// random span id in the same trace.
pub fn outgoing(span: &tracing::Span, parent: &TraceParent) -> TraceParent {
    #[cfg(feature = "otel")]
    if let Some(own) = otel::span_context(span) {
        return own;
    }
    let _ = span;
    parent.child()
}

/// Parses a stored trace context (kept as text with the instance); an unreadable one is
/// ignored.
pub(crate) fn stored(value: Option<&str>) -> Option<TraceParent> {
    value.and_then(TraceParent::parse)
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    pub(super) fn set_parent(span: &tracing::Span, parent: &TraceParent) {
        let cx = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(cx);
        if let Err(e) = span.set_parent(cx) {
            tracing::debug!(error = %e, "could not set a span's trace parent");
        }
    }

    pub(super) fn span_context(span: &tracing::Span) -> Option<TraceParent> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        TraceParent::new(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
        assert_eq!(t.to_string(), GOOD);
        assert_eq!(TraceParent::parse(&format!(" {GOOD}\t")), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.parent_id(), t.parent_id());
        assert_eq!(TraceParent::parse(&c.to_string()), Some(c));
    }

    #[test]
    fn later_versions_may_carry_more() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceParent::parse(v1).is_some());
        assert!(TraceParent::parse(&format!("{v1}-whatever")).is_some());
        assert!(TraceParent::parse(&format!("{v1}x")).is_none());
    }

    #[test]
    fn refuses_everything_else_without_panicking() {
        let bad = [
            "",
            "00",
            "garbage",
            // Version ff, uppercase, extra data on version 00, wrong separators.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Not hex, short, long.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Multi-byte characters where hex digits belong.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b), None, "{b:?}");
        }
        // Every prefix and every single-byte change of a good value is handled.
        for i in 0..GOOD.len() {
            let _ = TraceParent::parse(&GOOD[..i]);
            for c in ["-", "z", "A", "\u{0}", "é"] {
                let mut s = GOOD.to_string();
                s.replace_range(i..i + 1, c);
                let _ = TraceParent::parse(&s);
            }
        }
    }

    #[tokio::test]
    async fn scopes_carry_the_context() {
        assert_eq!(current(), None);
        let t = TraceParent::parse(GOOD);
        assert_eq!(scope(t, async { current() }).await, t);
        assert_eq!(current(), None);
    }
}
