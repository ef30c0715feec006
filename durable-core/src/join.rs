//! Combinators for durable futures: `when_all` (fan-in), `when_any` and `race`. They poll
//! only the children that were woken, so fan-out over thousands of calls stays linear, and
//! they pick winners in index order, so replay always picks the same one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

struct ChildWaker {
    index: usize,
    ready: Arc<Mutex<Vec<usize>>>,
    parent: Mutex<Option<Waker>>,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
        if let Some(w) = self
            .parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// Future of [`when_all`].
pub struct WhenAll<F: Future> {
    children: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
    wakers: Vec<Arc<ChildWaker>>,
    ready: Arc<Mutex<Vec<usize>>>,
    first: bool,
    remaining: usize,
}

impl<F: Future> std::fmt::Debug for WhenAll<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhenAll")
            .field("remaining", &self.remaining)
            .finish()
    }
}

/// Waits for every future and returns their outputs in input order.
pub fn when_all<F: Future>(futures: impl IntoIterator<Item = F>) -> WhenAll<F> {
    let children: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let n = children.len();
    let ready = Arc::new(Mutex::new(Vec::new()));
    let wakers = (0..n)
        .map(|index| {
            Arc::new(ChildWaker {
                index,
                ready: ready.clone(),
                parent: Mutex::new(None),
            })
        })
        .collect();
    WhenAll {
        children,
        outputs: (0..n).map(|_| None).collect(),
        wakers,
        ready,
        first: true,
        remaining: n,
    }
}

impl<F: Future> Unpin for WhenAll<F> {}

impl<F: Future> Future for WhenAll<F> {
    type Output = Vec<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let to_poll: Vec<usize> = if this.first {
            this.first = false;
            for w in &this.wakers {
                *w.parent.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            }
            (0..this.children.len()).collect()
        } else {
            let mut r = std::mem::take(&mut *this.ready.lock().unwrap_or_else(|e| e.into_inner()));
            r.sort_unstable();
            r.dedup();
            if !r.is_empty() {
                let parent = cx.waker();
                for &i in &r {
                    let mut p = this.wakers[i]
                        .parent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if !p.as_ref().is_some_and(|w| w.will_wake(parent)) {
                        *p = Some(parent.clone());
                    }
                }
            }
            r
        };
        for i in to_poll {
            let Some(child) = this.children[i].as_mut() else {
                continue;
            };
            let waker = Waker::from(this.wakers[i].clone());
            let mut ccx = Context::from_waker(&waker);
            if let Poll::Ready(out) = child.as_mut().poll(&mut ccx) {
                this.outputs[i] = Some(out);
                this.children[i] = None;
                this.remaining -= 1;
            }
        }
        if this.remaining == 0 {
            Poll::Ready(
                this.outputs
                    .iter_mut()
                    .map(|o| o.take().expect("every child finished"))
                    .collect(),
            )
        } else {
            Poll::Pending
        }
    }
}

/// Future of [`when_any`].
pub struct WhenAny<F> {
    children: Vec<F>,
}

impl<F> std::fmt::Debug for WhenAny<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhenAny")
            .field("len", &self.children.len())
            .finish()
    }
}

/// Waits for the first future to finish and returns its index and output; the other
/// futures are dropped (timers cancelled, event waits withdrawn, activity calls cancelled:
/// see `ActivityContext::cancelled`). When several are ready at once, the lowest index
/// wins.
///
/// # Panics
/// When polled with no futures.
pub fn when_any<F: Future + Unpin>(futures: impl IntoIterator<Item = F>) -> WhenAny<F> {
    WhenAny {
        children: futures.into_iter().collect(),
    }
}

impl<F: Future + Unpin> Future for WhenAny<F> {
    type Output = (usize, F::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(
            !self.children.is_empty(),
            "when_any needs at least one future"
        );
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Poll::Ready(out) = Pin::new(child).poll(cx) {
                self.children.clear();
                return Poll::Ready((i, out));
            }
        }
        Poll::Pending
    }
}

/// One of two outcomes of [`race`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// Future of [`race`].
#[derive(Debug)]
pub struct Race<A, B> {
    a: Option<A>,
    b: Option<B>,
}

/// Races two futures of different types (e.g. an external event against a timer). The
/// first wins on a tie; the loser is dropped (a losing timer is cancelled).
pub fn race<A: Future + Unpin, B: Future + Unpin>(a: A, b: B) -> Race<A, B> {
    Race {
        a: Some(a),
        b: Some(b),
    }
}

impl<A: Future + Unpin, B: Future + Unpin> Future for Race<A, B> {
    type Output = Either<A::Output, B::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(a) = this.a.as_mut() {
            if let Poll::Ready(v) = Pin::new(a).poll(cx) {
                this.a = None;
                this.b = None;
                return Poll::Ready(Either::Left(v));
            }
        }
        if let Some(b) = this.b.as_mut() {
            if let Poll::Ready(v) = Pin::new(b).poll(cx) {
                this.a = None;
                this.b = None;
                return Poll::Ready(Either::Right(v));
            }
        }
        Poll::Pending
    }
}
