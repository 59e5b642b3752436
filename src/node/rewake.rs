//! A bound on lost wake-ups: [`Rewoken`] polls a future on its own wake-ups and, in
//! addition, every `every`, and counts the times the future was found finished on such a
//! tick without having asked to be polled. A finished future that did not wake its task
//! means a wake-up was lost beneath it (in a stream multiplexer, say); without the tick
//! the task would sleep until some unrelated timer fired.
//!
//! The chunk exchanges of a state transfer run under it: a transfer must not stall for
//! tens of seconds because one stream's data arrived without waking its reader.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Interval, MissedTickBehavior};

/// Forwards wake-ups to the task polling the future, noting that one came.
#[derive(Default)]
struct Flagged {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A future polled on its own wake-ups and on a periodic tick (see the module doc).
pub struct Rewoken<F> {
    future: Pin<Box<F>>,
    flag: Arc<Flagged>,
    waker: Waker,
    tick: Interval,
    polled: bool,
    unwoken: Counter,
}

impl<F: Future> Rewoken<F> {
    /// Polls `future` at least every `every`; a completion found without a wake-up adds one
    /// to `unwoken`.
    pub fn new(future: F, every: Duration, unwoken: Counter) -> Self {
        let flag = Arc::new(Flagged::default());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            future: Box::pin(future),
            waker: Waker::from(flag.clone()),
            flag,
            tick,
            polled: false,
            unwoken: unwoken.clone(),
        }
    }
}

impl<F: Future> Future for Rewoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.flag.task.register(cx.waker());
        let woken = this.flag.woken.swap(false, Ordering::AcqRel);
        // registers the tick's wake-up with the caller's task
        while this.tick.poll_tick(cx).is_ready() {}
        let first = !std::mem::replace(&mut this.polled, true);
        let output = this
            .future
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        if output.is_ready() && !woken && !first {
            this.unwoken.inc();
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A future that finishes once `done` is set, and wakes its task only if told to.
    struct Gate {
        done: Arc<AtomicBool>,
        waiter: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.done.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waiter.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn gate() -> (Gate, Arc<AtomicBool>, Arc<Mutex<Option<Waker>>>) {
        let done = Arc::new(AtomicBool::new(false));
        let waiter = Arc::new(Mutex::new(None));
        (
            Gate {
                done: done.clone(),
                waiter: waiter.clone(),
            },
            done,
            waiter,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_without_waking_is_found_on_the_next_tick_and_counted() {
        let (gate, done, _waiter) = gate();
        let unwoken = Counter::default();
        let every = Duration::from_millis(200);
        let opened = tokio::time::Instant::now();
        let watched = tokio::spawn(Rewoken::new(gate, every, unwoken.clone()));
        tokio::task::yield_now().await;
        // finished, but nobody is woken
        done.store(true, Ordering::Release);
        tokio::time::timeout(Duration::from_secs(60), watched)
            .await
            .expect("found within a tick, not left asleep")
            .unwrap();
        assert!(opened.elapsed() <= every * 2, "{:?}", opened.elapsed());
        assert_eq!(unwoken.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_wakes_its_task_is_not_counted() {
        let (gate, done, waiter) = gate();
        let unwoken = Counter::default();
        let watched = tokio::spawn(Rewoken::new(
            gate,
            Duration::from_secs(3600),
            unwoken.clone(),
        ));
        tokio::task::yield_now().await;
        done.store(true, Ordering::Release);
        waiter.lock().unwrap().take().expect("it waits").wake();
        tokio::time::timeout(Duration::from_secs(60), watched)
            .await
            .expect("woken, so polled at once")
            .unwrap();
        assert_eq!(unwoken.get(), 0);
    }
}
