//! Limits on client connections, applied below TLS: at most `max` open at once
//! (more are closed at accept), `TCP_NODELAY` (small responses are not held
//! back waiting for an ACK), and an idle timeout: a connection that moves no
//! byte either way for `idle` is closed, whether it sits between requests,
//! stalls mid-body or stops reading a response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::metrics::Metrics;

#[derive(Clone)]
pub struct LimitAcceptor {
    slots: Arc<Semaphore>,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl LimitAcceptor {
    pub fn new(max: usize, idle: Duration, metrics: Arc<Metrics>) -> Self {
        LimitAcceptor {
            slots: Arc::new(Semaphore::new(max.max(1))),
            idle,
            metrics,
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Limited<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.connections_refused.inc();
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        // Nagle would hold a small response until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        self.metrics.connections_open.inc();
        std::future::ready(Ok((
            Limited {
                inner: stream,
                idle: self.idle,
                last_progress: Instant::now(),
                timer: Box::pin(tokio::time::sleep(self.idle)),
                metrics: self.metrics.clone(),
                _permit: permit,
            },
            service,
        )))
    }
}

/// A connection holding one of the slots, closed when idle too long.
pub struct Limited<S> {
    inner: S,
    idle: Duration,
    last_progress: Instant,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Drop for Limited<S> {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl<S> Limited<S> {
    /// Called when an operation would wait: errors once the connection has been
    /// idle for too long, otherwise arms the timer to wake this task then.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.last_progress + self.idle;
        let expired = Instant::now() >= deadline || {
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            self.timer.as_mut().poll(cx).is_ready()
        };
        if expired {
            self.metrics.connections_timed_out.inc();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle too long",
            ));
        }
        Ok(())
    }
}

use std::future::Future as _;

impl<S> Limited<S> {
    /// Records progress of a finished operation, or checks the idle timer of
    /// one that would wait.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        progressed: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(Ok(v)) => {
                if progressed(&v) {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut me.inner).poll_read(cx, buf);
        let grew = buf.filled().len() > before;
        me.track(cx, poll, |_| grew)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let poll = Pin::new(&mut me.inner).poll_write(cx, data);
        me.track(cx, poll, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let poll = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.track(cx, poll, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
