//! The circuit breaker of the processing runtime: after N consecutive handler failures it
//! opens (the runner pauses fetching; group membership stays alive through the background
//! heartbeat), waits a cool-down, then goes half-open and lets one handler call through: a
//! success closes it, a failure opens it again. Every transition is logged.
//!
//! The closed state costs two atomic loads per handler call; the lock is taken only while the
//! breaker is not closed or a failure is recorded.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Handlers run.
    Closed,
    /// Too many consecutive failures: no handler runs until the cool-down has passed.
    Open,
    /// The cool-down passed: one handler call decides (success → closed, failure → open).
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// When the breaker opens and how long it stays open: [`Default`], then the setters.
///
/// ```
/// use std::time::Duration;
/// use purekafka::BreakerConfig;
///
/// let breaker = BreakerConfig::default()
///     .failure_threshold(5)
///     .cool_down(Duration::from_secs(10));
/// assert_eq!(breaker.failure_threshold, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failed handler calls (retries included) that open the breaker; 0 turns
    /// the breaker off. Default 10: a few unlucky records do not stop a partition, a
    /// dependency that is down does within seconds.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one trial call. Default 30 s: long enough for
    /// a restarting dependency, short enough that recovery is noticed quickly.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 10,
            cool_down: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// Sets [`failure_threshold`](Self::failure_threshold) (0 turns the breaker off).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// Sets [`cool_down`](Self::cool_down).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

#[derive(Debug)]
struct Slow {
    opened_at: Instant,
    /// A half-open trial call is running.
    trial_running: bool,
}

/// A circuit breaker shared by the handlers of one runner.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    opened: AtomicU64,
    slow: Mutex<Slow>,
    changed: Notify,
}

/// Permission to make one handler call; report its outcome with
/// [`success`](Self::success) or [`failure`](Self::failure). Dropped without an outcome (the
/// call did not happen), a half-open trial slot is given back.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.trial = false;
        self.breaker.on_success();
    }
    /// The call failed.
    pub fn failure(mut self) {
        self.trial = false;
        self.breaker.on_failure();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.breaker.lock().trial_running = false;
            self.breaker.changed.notify_waiters();
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: AtomicU8::new(0),
            consecutive: AtomicU32::new(0),
            opened: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                opened_at: Instant::now(),
                trial_running: false,
            }),
            changed: Notify::new(),
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How many times the breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, to: BreakerState, why: &str) {
        let from = BreakerState::from_u8(self.state.swap(to.as_u8(), Ordering::AcqRel));
        if from != to {
            match to {
                BreakerState::Open => {
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = ?from, to = ?to, cool_down_ms = self.config.cool_down.as_millis() as u64, why, "circuit breaker opened: fetching paused");
                }
                _ => tracing::info!(from = ?from, to = ?to, why, "circuit breaker transition"),
            }
            self.changed.notify_waiters();
        }
    }

    /// Waits until a handler call may run: at once while closed; after the cool-down, as the
    /// one half-open trial.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            if self.state() == BreakerState::Closed {
                return Permit {
                    breaker: self,
                    trial: false,
                };
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut slow = self.lock();
                match self.state() {
                    BreakerState::Closed => continue,
                    BreakerState::Open => {
                        let until = slow.opened_at + self.config.cool_down;
                        if Instant::now() >= until && !slow.trial_running {
                            slow.trial_running = true;
                            drop(slow);
                            self.set(BreakerState::HalfOpen, "cool-down over: one trial call");
                            return Permit {
                                breaker: self,
                                trial: true,
                            };
                        }
                        Some(until)
                    }
                    BreakerState::HalfOpen => {
                        if !slow.trial_running {
                            slow.trial_running = true;
                            return Permit {
                                breaker: self,
                                trial: true,
                            };
                        }
                        None
                    }
                }
            };
            match wait_until {
                Some(until) => {
                    let _ = tokio::time::timeout_at(until, changed).await;
                }
                None => changed.await,
            }
        }
    }

    fn on_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.state() != BreakerState::Closed {
            let mut slow = self.lock();
            slow.trial_running = false;
            drop(slow);
            self.set(BreakerState::Closed, "trial call succeeded");
        }
    }

    pub(crate) fn on_failure(&self) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = self.config.failure_threshold;
        match self.state() {
            BreakerState::HalfOpen => {
                let mut slow = self.lock();
                slow.trial_running = false;
                slow.opened_at = Instant::now();
                drop(slow);
                self.set(BreakerState::Open, "trial call failed");
            }
            BreakerState::Closed if threshold > 0 && n >= threshold => {
                self.lock().opened_at = Instant::now();
                self.set(
                    BreakerState::Open,
                    "consecutive failures reached the threshold",
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(5),
        });
        for _ in 0..3 {
            b.acquire().await.failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        let t0 = Instant::now();
        let p = b.acquire().await;
        assert!(t0.elapsed() >= Duration::from_secs(5));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p.failure();
        assert_eq!(b.state(), BreakerState::Open);
        let p = b.acquire().await;
        // Only one trial at a time.
        assert!(tokio::time::timeout(Duration::from_secs(1), b.acquire())
            .await
            .is_err());
        p.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 2);
        b.acquire().await.success();
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count_and_zero_disables() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(5),
        });
        for _ in 0..10 {
            b.acquire().await.failure();
            b.acquire().await.success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let off = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 0,
            cool_down: Duration::from_secs(5),
        });
        for _ in 0..100 {
            off.acquire().await.failure();
        }
        assert_eq!(off.state(), BreakerState::Closed);
    }
}
