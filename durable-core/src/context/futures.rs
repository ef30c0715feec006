//! The futures the context hands out: one durable call ([`DurableFuture`]), an external
//! event ([`EventFuture`]), a critical section's locks ([`LockFuture`],
//! [`CriticalSection`]) and continue-as-new. Each reads its outcome from the replay state.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;

use super::state::Completion;
use super::{decode_task, OrchestrationContext};
use crate::error::{TaskError, TaskKind};

/// The future of [`OrchestrationContext::lock`]: resolves to the critical section once
/// every lock is held.
pub struct LockFuture {
    pub(crate) ctx: OrchestrationContext,
    pub(crate) inner: DurableFuture<Result<(), TaskError>>,
    pub(crate) ids: Vec<String>,
}

impl std::fmt::Debug for LockFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture")
            .field("entities", &self.ids)
            .finish()
    }
}

impl Future for LockFuture {
    type Output = Result<CriticalSection, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                this.ctx.state().critical_section = Some(this.ids.clone());
                Poll::Ready(Ok(CriticalSection {
                    ctx: this.ctx.clone(),
                    ids: std::mem::take(&mut this.ids),
                    released: false,
                }))
            }
        }
    }
}

/// Holds entity locks; dropping it (or calling [`release`](Self::release)) releases them.
pub struct CriticalSection {
    ctx: OrchestrationContext,
    ids: Vec<String>,
    released: bool,
}

impl std::fmt::Debug for CriticalSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriticalSection")
            .field("entities", &self.ids)
            .finish()
    }
}

impl CriticalSection {
    /// Releases the locks now.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            self.ctx.release_locks(&self.ids);
        }
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        self.release_now();
    }
}

pub(crate) enum FutureState<T> {
    Pending { seq: u64 },
    Ready(Option<T>),
    Never,
}

/// The future of one durable call (activity, sub-orchestration, timer). The call is
/// recorded when the future is created, so several can run in parallel (fan-out).
pub struct DurableFuture<T> {
    ctx: OrchestrationContext,
    state: FutureState<T>,
    kind: TaskKind,
    name: String,
    decode: fn(Completion, TaskKind, &str) -> T,
}

impl<T> std::fmt::Debug for DurableFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableFuture")
            .field("name", &self.name)
            .finish()
    }
}

impl<T> DurableFuture<T> {
    pub(crate) fn pending(
        ctx: OrchestrationContext,
        seq: u64,
        kind: TaskKind,
        name: &str,
        decode: fn(Completion, TaskKind, &str) -> T,
    ) -> Self {
        Self {
            ctx,
            state: FutureState::Pending { seq },
            kind,
            name: name.to_string(),
            decode,
        }
    }

    pub(crate) fn ready(ctx: OrchestrationContext, value: T) -> Self {
        Self {
            ctx,
            state: FutureState::Ready(Some(value)),
            kind: TaskKind::Activity,
            name: String::new(),
            decode: |_, _, _| unreachable!("a ready future is never decoded"),
        }
    }

    pub(crate) fn never(ctx: OrchestrationContext) -> Self {
        Self {
            ctx,
            state: FutureState::Never,
            kind: TaskKind::Activity,
            name: String::new(),
            decode: |_, _, _| unreachable!("a diverged call never completes"),
        }
    }

    /// The sequence number of this call, when it was recorded.
    pub fn sequence_number(&self) -> Option<u64> {
        match self.state {
            FutureState::Pending { seq } => Some(seq),
            _ => None,
        }
    }
}

impl<T> Unpin for DurableFuture<T> {}

impl<T> Future for DurableFuture<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        match &mut this.state {
            FutureState::Ready(v) => {
                Poll::Ready(v.take().expect("DurableFuture polled after completion"))
            }
            FutureState::Never => Poll::Pending,
            FutureState::Pending { seq } => {
                let seq = *seq;
                let mut st = this.ctx.state();
                match st.completions.remove(&seq) {
                    Some(c) => {
                        drop(st);
                        this.state = FutureState::Ready(None);
                        Poll::Ready((this.decode)(c, this.kind, &this.name))
                    }
                    None => {
                        st.wakers.insert(seq, cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl<T> Drop for DurableFuture<T> {
    fn drop(&mut self) {
        if let FutureState::Pending { seq } = self.state {
            let mut st = self.ctx.state();
            st.wakers.remove(&seq);
            // A call dropped before it completed: an activity's result is no longer
            // wanted, and the episode cancels its work.
            st.dropped(seq);
        }
    }
}

/// The future of an external event wait. Dropping it before it completes withdraws the
/// wait; an event it had already received goes back to the front of the buffer.
pub struct EventFuture<T> {
    pub(crate) ctx: OrchestrationContext,
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) done: bool,
    pub(crate) _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EventFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFuture")
            .field("name", &self.name)
            .finish()
    }
}

impl<T> Unpin for EventFuture<T> {}

impl<T: DeserializeOwned> Future for EventFuture<T> {
    type Output = Result<T, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            return Poll::Pending;
        }
        let mut st = this.ctx.state();
        match st.event_results.remove(&this.id) {
            Some(input) => {
                drop(st);
                this.done = true;
                Poll::Ready(decode_task(
                    Completion::Ok(input),
                    TaskKind::ExternalEvent,
                    &this.name,
                ))
            }
            None => {
                st.event_wakers.insert(this.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for EventFuture<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.ctx.state();
        st.event_wakers.remove(&self.id);
        if let Some(input) = st.event_results.remove(&self.id) {
            st.event_buffers
                .entry(self.name.clone())
                .or_default()
                .push_front(input);
        } else if let Some(waiters) = st.event_waiters.get_mut(&self.name) {
            waiters.retain(|w| *w != self.id);
        }
    }
}

/// The future returned by [`OrchestrationContext::continue_as_new`]: it never completes;
/// the engine ends the execution and starts the next one.
pub struct ContinueAsNew<T> {
    pub(crate) _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ContinueAsNew<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContinueAsNew")
    }
}

impl<T> Future for ContinueAsNew<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<T> {
        Poll::Pending
    }
}
