//! Work that must not stop half-way when its request is dropped.
//!
//! A request future can be dropped half-way: hyper's default drops the
//! handler of a client that hangs up while it waits (switchyard's own accept
//! loop, `listen`, does not, but the router must not depend on how it is
//! served), and so does any timeout or `select!` around it. What the store
//! has begun is stored all the same, so what follows it must run too:
//! the tracking API counts the events it stored; a management call changes
//! in memory what it changed in the store (or a revoked token would go on
//! working until the next start); a source function answering inline
//! records its run (or its request would wait for the next start).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Drives a future to its end even when what awaits it is dropped: the rest
/// of it is then spawned.
pub(crate) struct FinishOnDrop<F: Future + Send + 'static> {
    future: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> FinishOnDrop<F> {
    pub(crate) fn new(future: F) -> Self {
        FinishOnDrop {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F: Future + Send + 'static> Future for FinishOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Once it has answered, it never answers again.
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for FinishOnDrop<F> {
    fn drop(&mut self) {
        if let (Some(future), Ok(runtime)) =
            (self.future.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                future.await;
            });
        }
    }
}

/// Middleware of the management and function doors: each call runs to its
/// end, whether or not its client waits for the answer.
pub(crate) async fn run_to_end(request: Request, next: Next) -> Response {
    FinishOnDrop::new(next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_future_dropped_half_way_runs_to_its_end() {
        let finished = Arc::new(AtomicBool::new(false));
        let work = FinishOnDrop::new({
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        // Whoever awaited it gives up after its first poll.
        assert!(tokio::time::timeout(Duration::from_millis(1), work)
            .await
            .is_err());
        assert!(!finished.load(Ordering::SeqCst));
        for _ in 0..200 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the dropped future was not finished");
    }

    #[tokio::test]
    async fn a_future_awaited_to_its_end_runs_once() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let output = FinishOnDrop::new({
            let runs = runs.clone();
            async move { runs.fetch_add(1, Ordering::SeqCst) + 1 }
        })
        .await;
        assert_eq!(output, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
