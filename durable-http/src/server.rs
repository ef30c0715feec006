//! The standalone server's connections, on the host's listener and on the separate
//! metrics listener alike (each with its own count): a cap on how many are open at once,
//! a deadline for each request's header and for idle kept-alive connections, and a
//! growing back-off when accepting fails (for example when the process is out of file
//! descriptors).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::app::{App, Listener};
use crate::public_url::PeerAddr;

/// Connection limits of the standalone server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    /// How long a connection may take to send a request's complete header, counted from
    /// its opening or from the first byte after an idle spell.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// How many connections may be open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Accepts connections until `stop` changes, then lets open ones finish (up to 10 s).
/// `open` counts the connections open now.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    on: Listener,
    limits: ConnLimits,
    open: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = Backoff::default();
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog and
        // take no file descriptor until a slot frees.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            c = next_connection(|| listener.accept(), &mut backoff) => c,
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let open = OpenGuard::new(open.clone());
        let watch = Arc::new(ConnWatch::new(limits));
        let service = ConnService {
            app: app.clone(),
            on,
            peer,
            watch: watch.clone(),
        };
        let io = Watched {
            inner: stream,
            watch: watch.clone(),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = (slot, open);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                why = watch.expired() => tracing::debug!(%peer, "closing the connection: {why}"),
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Counts one open connection while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(count)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Delays between failed accepts: 5 ms doubling to 1 s, back to the start after a
/// success. Without it a listener out of file descriptors fails every accept at once and
/// the loop spins at full CPU.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = Self::FIRST
            .checked_mul(1 << self.failures.min(16))
            .map_or(Self::MAX, |d| d.min(Self::MAX));
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Errors that concern one connection only (it was reset before we took it): retry at
/// once. Anything else (EMFILE, ENFILE, ENOBUFS) backs off.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The next accepted connection; failures are logged and retried after a growing delay.
pub(crate) async fn next_connection<T, F, Fut>(mut accept: F, backoff: &mut Backoff) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(c) => {
                backoff.reset();
                return c;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "cannot accept a connection"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Where a connection is in its life, for its deadlines.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request's header since then.
    Header(Instant),
    /// Kept alive with nothing sent since then.
    Idle(Instant),
    /// Requests being handled (their bodies have their own deadline).
    Busy(u32),
}

/// A connection's phase, moved by its reads and its requests.
struct ConnWatch {
    phase: Mutex<Phase>,
    changed: Notify,
    limits: ConnLimits,
}

impl ConnWatch {
    fn new(limits: ConnLimits) -> Self {
        ConnWatch {
            phase: Mutex::new(Phase::Header(Instant::now())),
            changed: Notify::new(),
            limits,
        }
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *phase = f(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a request's header.
    fn on_read(&self) {
        let idle = matches!(
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            Phase::Idle(_)
        );
        if idle {
            self.update(|p| match p {
                Phase::Idle(_) => Phase::Header(Instant::now()),
                p => p,
            });
        }
    }

    fn begin_request(&self) {
        self.update(|p| match p {
            Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
            _ => Phase::Busy(1),
        });
    }

    fn end_request(&self) {
        self.update(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    fn deadline(&self) -> Option<(Instant, &'static str)> {
        match *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Header(since) => Some((
                since + self.limits.header_read_timeout,
                "no complete request header in time",
            )),
            Phase::Idle(since) => Some((since + self.limits.idle_timeout, "idle too long")),
            Phase::Busy(_) => None,
        }
    }

    /// Resolves when the current phase outlives its deadline, with the reason.
    async fn expired(&self) -> &'static str {
        loop {
            let changed = self.changed.notified();
            match self.deadline() {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// The TCP stream, telling the watch when bytes arrive.
struct Watched {
    inner: TcpStream,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app on one connection: adds the peer address and keeps the watch up to date.
struct ConnService {
    app: Arc<App>,
    /// Which routes this listener serves.
    on: Listener,
    peer: SocketAddr,
    watch: Arc<ConnWatch>,
}

/// Ends the request in the watch however its future ends (also when dropped).
struct RequestGuard(Arc<ConnWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.watch.begin_request();
        let guard = RequestGuard(self.watch.clone());
        req.extensions_mut().insert(PeerAddr(self.peer));
        let app = self.app.clone();
        let on = self.on;
        Box::pin(async move {
            let resp = app.handle_on(on, req).await;
            drop(guard);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        for _ in 0..100 {
            assert_eq!(b.next_delay(), Backoff::MAX);
        }
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_instead_of_spinning() {
        let mut calls = Vec::new();
        let mut backoff = Backoff::default();
        let start = Instant::now();
        let mut failures = 0;
        let got = next_connection(
            || {
                calls.push(start.elapsed());
                failures += 1;
                let r = match failures {
                    // Out of file descriptors five times, then a connection reset by its
                    // peer (retried at once), then a connection.
                    1..=5 => Err(std::io::Error::from_raw_os_error(24)),
                    6 => Err(std::io::ErrorKind::ConnectionAborted.into()),
                    _ => Ok(7),
                };
                std::future::ready(r)
            },
            &mut backoff,
        )
        .await;
        assert_eq!(got, 7);
        let ms: Vec<u128> = calls.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 5, 15, 35, 75, 155, 155]);
        assert_eq!(backoff.failures, 0, "a success resets the back-off");
    }
}
