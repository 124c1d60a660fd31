//! Low-priority threads for the CPU work behind the ACK (routing and mapping,
//! applying documents to the record store).
//!
//! Why: intake (de-framing, journaling, ACKing) and the work behind it share
//! the machine's cores. Under a burst, mapping every message as fast as it
//! arrives halved intake throughput on a 2-core machine (BENCHMARKS.md). The
//! ACK is what senders wait for; the queue behind it is durable and may lag.
//! On Linux these threads run under `SCHED_IDLE` (and at nice [`NICE`]
//! where that is refused): they get the CPU only when intake does not want
//! it, so a burst is acknowledged first and the backlog drains as soon as
//! there is CPU to spare. Measured against nice 10 alone, interleaved: 32
//! connections with the shipped routes went from 10.8–12.3k to 15.6–18.7k
//! msgs/s (BENCHMARKS.md). The price: under a load that keeps every core
//! busy with intake for long, the queue waits (durably) until it eases.
//!
//! It does not order or prioritise jobs among themselves (FIFO), and it is not
//! for blocking I/O that waits on the network (use `spawn_blocking`).
//!
//! # Invariants
//! - A job that panics answers [`BackgroundError::Panicked`]; the thread lives on.
//! - Lowering the priority is best effort: where the OS refuses (or is not
//!   Linux) jobs still run, at normal priority.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// The nice value of the background threads (0 is normal, 19 the lowest).
pub const NICE: i32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackgroundError {
    #[error("a background job panicked")]
    Panicked,
    #[error("the background threads are gone")]
    Gone,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Each background thread's stack: a main thread's, so what `junction map`
/// maps on the main thread is mapped here too (the mapping's nesting and
/// macro chains are bounded at load to fit; `mapping::tests`).
pub const STACK_BYTES: usize = 8 << 20;

struct Pool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("junction-bg-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    lower_priority();
                    loop {
                        // Hold the lock only to take one job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a background thread");
            }
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    })
}

/// How many background threads there are: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Lowers the calling thread's priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, sched_setscheduler and setpriority have no
        // memory-safety preconditions (`param` outlives the call); on Linux a
        // thread id names only this thread.
        let (idle, niced) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let param = libc::sched_param { sched_priority: 0 };
            let idle = libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param);
            (
                idle == 0,
                libc::setpriority(libc::PRIO_PROCESS, tid, NICE) == 0,
            )
        };
        if !idle && !niced {
            tracing::debug!(
                "cannot lower the priority of a background thread; it runs at normal priority"
            );
        }
    }
}

/// Runs `f` on a low-priority thread and waits for its answer.
pub async fn run<F, R>(f: F) -> Result<R, BackgroundError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let answer = catch_unwind(AssertUnwindSafe(f)).map_err(|_| BackgroundError::Panicked);
        let _ = tx.send(answer);
    });
    {
        let jobs = pool().jobs.lock().map_err(|_| BackgroundError::Gone)?;
        jobs.send(job).map_err(|_| BackgroundError::Gone)?;
    }
    rx.await.map_err(|_| BackgroundError::Gone)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        assert_eq!(run(|| 2 + 2).await, Ok(4));
        let panicked = run(|| -> u32 { panic!("boom") }).await;
        assert_eq!(panicked, Err(BackgroundError::Panicked));
        let many: Vec<_> = (0..32u32).map(|i| run(move || i * 2)).collect();
        let mut total = 0;
        for job in many {
            total += job.await.unwrap();
        }
        assert_eq!(total, (0..32u32).map(|i| i * 2).sum::<u32>());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn threads_run_at_lower_priority() {
        let (policy, nice) = run(|| {
            // SAFETY: as in lower_priority.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                (
                    libc::sched_getscheduler(tid as libc::pid_t),
                    libc::getpriority(libc::PRIO_PROCESS, tid),
                )
            }
        })
        .await
        .unwrap();
        // SCHED_IDLE (allowed for unprivileged threads too) or, where a
        // sandbox refuses it, at least nice NICE (a process started at a
        // higher nice value keeps it).
        assert!(
            policy == libc::SCHED_IDLE || nice >= NICE,
            "background thread policy {policy}, nice {nice}"
        );
        assert!(nice >= NICE, "background thread nice {nice}");
    }
}
