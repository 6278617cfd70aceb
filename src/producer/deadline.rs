//! The sender's wake-up at a linger deadline, to the microsecond.
//!
//! tokio's timer counts whole milliseconds from the runtime's start: it rounds a deadline up
//! to the next tick and its driver parks for whole milliseconds counted from the current
//! tick, so `sleep_until(t)` fires anywhere from `t` to about `t + 2 ms` on an idle runtime.
//! A batch waiting for `linger.ms` on it lingered up to 2 ms too long (and sleeping 1 ms short
//! to make up for it sent batches up to 1 ms too early). librdkafka's broker threads wait on
//! `poll` with the remaining time rounded up to a millisecond: a batch goes between `linger`
//! and `linger + 1 ms`.
//!
//! [`DeadlineTimer`] is one thread per producer that waits on a condition variable for the
//! earliest deadline the sender armed (a futex wait with the full precision of the monotonic
//! clock, not whole milliseconds) and then calls the sender's wake-up. It uses no CPU while
//! it waits (no spinning), waits without a deadline while nothing lingers, and stops when its
//! owner drops it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The timer thread's name (Linux shows at most 15 bytes of it).
pub(crate) const THREAD_NAME: &str = "purekafka-timer";

/// What the timer thread and its owner share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// The earliest armed deadline not yet reached.
    deadline: Option<Instant>,
    /// Set when the owner is dropped: the thread ends.
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A thread that calls a wake-up function at the earliest armed deadline (see the module
/// docs). Dropping it ends the thread.
pub(crate) struct DeadlineTimer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DeadlineTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineTimer")
            .field("deadline", &self.shared.lock().deadline)
            .finish()
    }
}

impl DeadlineTimer {
    /// Starts the thread; `wake` is called (on it) each time an armed deadline is reached.
    /// Fails only when the system refuses a new thread.
    pub(crate) fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<DeadlineTimer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                deadline: None,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            // It only waits and calls `wake`: a small stack is plenty.
            .stack_size(64 << 10)
            .spawn(move || run(&theirs, wake))?;
        Ok(DeadlineTimer { shared })
    }

    /// Asks for a wake-up at `at`, unless an earlier one is armed already (an earlier wake-up
    /// than needed only makes the sender look once more and arm the next deadline).
    pub(crate) fn arm(&self, at: Instant) {
        let mut state = self.shared.lock();
        if state.deadline.is_none_or(|d| at < d) {
            state.deadline = Some(at);
            drop(state);
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
    }
}

/// The thread: wait for the earliest deadline (or a change), then wake.
fn run(shared: &Shared, wake: impl Fn()) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        match state.deadline {
            None => {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            Some(at) => {
                let now = Instant::now();
                if at <= now {
                    state.deadline = None;
                    drop(state);
                    wake();
                    state = shared.lock();
                } else {
                    state = shared
                        .changed
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn wakes_at_the_earliest_armed_deadline_and_not_before() {
        let (tx, rx) = mpsc::channel();
        let timer = DeadlineTimer::spawn(move || {
            let _ = tx.send(Instant::now());
        })
        .expect("thread");
        let start = Instant::now();
        let late = start + Duration::from_millis(200);
        let early = start + Duration::from_millis(20);
        timer.arm(late);
        timer.arm(early);
        timer.arm(late); // later than the armed one: ignored
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("woken");
        assert!(first >= early, "woke before the deadline");
        // Nothing else was armed: no second wake-up.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // A deadline already past wakes at once.
        timer.arm(Instant::now());
        rx.recv_timeout(Duration::from_secs(30))
            .expect("woken again");
    }

    #[test]
    fn dropping_the_timer_ends_its_thread() {
        let (tx, rx) = mpsc::channel::<()>();
        let timer = DeadlineTimer::spawn(move || {
            let _ = tx.send(());
        })
        .expect("thread");
        timer.arm(Instant::now() + Duration::from_secs(3600));
        drop(timer);
        // The closure (and its sender) is dropped when the thread ends.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
