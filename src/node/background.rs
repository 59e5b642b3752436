//! Long jobs that must not take the CPU from the event loop. A snapshot export (a file on
//! request, a scheduled snapshot, an offer to a joiner) reads and encodes the whole state
//! for seconds; on two cores it competed with the event loop and the API for the CPU and
//! tripled the op-apply p99 while it ran (BENCHMARKS.md); so does a joiner's installer,
//! which verifies, decodes and writes every chunk of the state it fetches. Such a job runs
//! on a thread of its own at a lower scheduling priority ([`NICE`]), so the loop gets a
//! core whenever it has work and the job takes the rest. Its disk I/O is paced separately
//! (`--snapshot-io-limit`, [`super::io_budget`]).

use std::future::Future;

/// How much lower a background thread's priority is than the node's (Linux nice
/// increments: at 10 the scheduler gives it about a tenth of the CPU weight of a thread
/// at 0 while both want to run, and all of an idle core).
pub const NICE: i32 = 10;

/// Runs `work` on a new thread named `name`, at a priority [`NICE`] below the caller's;
/// resolves to its result, or `None` if the thread could not start or `work` panicked.
/// Dropping the future does not stop the work.
pub fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_own_priority();
            let _ = tx.send(work());
        });
    if let Err(error) = &started {
        tracing::warn!(%error, "cannot start a background thread");
    }
    async move {
        match started {
            Ok(_) => rx.await.ok(),
            Err(_) => None,
        }
    }
}

/// The calling thread's nice value.
pub fn own_nice() -> i32 {
    // SAFETY: getpriority reads the calling thread's (tid's) nice value; no memory is passed
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Lowers the calling thread's priority by [`NICE`] (on Linux the nice value is a
/// thread's own). A failure leaves it as it was.
fn lower_own_priority() {
    let target = own_nice().saturating_add(NICE).min(19);
    // SAFETY: setpriority changes the calling thread's (tid's) nice value; no memory is passed
    let done =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, target) };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_background_job_runs_below_the_callers_priority_and_returns_its_result() {
        let caller = own_nice();
        let (result, nice) = spawn("test-job", || (6 * 7, own_nice())).await.unwrap();
        assert_eq!(result, 42);
        assert_eq!(nice, (caller + NICE).min(19));
        assert_eq!(own_nice(), caller, "the caller's thread is left as it was");
        let panicked = spawn("test-panic", || -> u32 { panic!("planted") }).await;
        assert_eq!(panicked, None);
    }
}
