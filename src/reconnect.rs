//! The exponential backoff policy and the retry loop that every reconnecting path uses.
//!
//! One policy ([`ReconnectPolicy`]) drives connection attempts at start-up, re-connection while
//! running, and retries of retriable broker errors. Each failed attempt is logged with
//! `tracing` (operation, attempt, delay, error) and reported to the optional
//! [`RetryEvent`] hook; a give-up is an [`Error::RetriesExhausted`] that says what was tried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::exponential::ExponentialBackoff;
use backoff::Clock;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// How failed attempts are spaced and when to give up.
///
/// Delays grow from `initial_delay` by `multiplier` up to `max_delay`; each delay is randomised
/// by ±`jitter` (a fraction) so that many clients restarting together do not retry in step.
/// Retrying stops when the next delay would end past `max_elapsed` counted from the first
/// attempt (`None`: never), so a give-up arrives within the budget, not after it.
///
/// ```
/// use std::time::Duration;
/// use purekafka::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .initial_delay(Duration::from_millis(50))
///     .max_elapsed(Some(Duration::from_secs(10)));
/// assert_eq!(policy.multiplier, 2.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// First delay after a failure. Default 100 ms (`reconnect.backoff.ms`, as librdkafka):
    /// short enough that a broker restart is barely noticed.
    pub initial_delay: Duration,
    /// Growth factor between delays. Default 2.0 (`reconnect.backoff.multiplier`).
    pub multiplier: f64,
    /// Upper bound of a single delay. Default 10 s (`reconnect.backoff.max.ms`, as
    /// librdkafka): a recovered broker is found within 10 s.
    pub max_delay: Duration,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %). Default 0.2
    /// (`reconnect.backoff.jitter`).
    pub jitter: f64,
    /// Give up after this long. Default 60 s (`reconnect.max.elapsed.ms`; 0 means never):
    /// long enough for a rolling broker restart, short enough that a wrong address fails
    /// a deployment within a minute.
    pub max_elapsed: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: 0.2,
            max_elapsed: Some(Duration::from_secs(60)),
        }
    }
}

impl ReconnectPolicy {
    /// Sets [`initial_delay`](Self::initial_delay).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets [`multiplier`](Self::multiplier).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`max_elapsed`](Self::max_elapsed) (`None`: never give up).
    pub fn max_elapsed(mut self, budget: Option<Duration>) -> Self {
        self.max_elapsed = budget;
        self
    }

    /// The `backoff` crate's schedule for this policy, starting now.
    pub(crate) fn schedule(&self) -> ExponentialBackoff<TokioClock> {
        let mut b = ExponentialBackoff {
            initial_interval: self.initial_delay,
            current_interval: self.initial_delay,
            randomization_factor: self.jitter,
            multiplier: self.multiplier,
            max_interval: self.max_delay,
            max_elapsed_time: self.max_elapsed,
            start_time: TokioClock.now(),
            clock: TokioClock,
        };
        b.reset();
        b
    }

    /// The delay before retry number `attempt` (from 1) of a loop that never gives up (the
    /// producer's batch retries, fetch workers, group re-joins): `initial_delay ×
    /// multiplier^(attempt − 1)`, at most `max_delay`, randomised by ±`jitter` by the
    /// `backoff` crate, the same schedule as the retry loop's.
    pub(crate) fn delay_for_attempt(&self, attempt: u32) -> Duration {
        let base = self.initial_delay.as_secs_f64()
            * self
                .multiplier
                .max(1.0)
                .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = Duration::from_secs_f64(base.min(self.max_delay.as_secs_f64()));
        let mut b = ExponentialBackoff {
            current_interval: base,
            max_elapsed_time: None,
            ..self.schedule()
        };
        b.next_backoff().unwrap_or(base)
    }
}

/// The `backoff` crate's clock, read from tokio so that elapsed budgets follow tokio's time
/// (and tokio's paused time in tests).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// One failed attempt that will be retried, as given to the retry hook.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// What is being retried (`"connect"`, `"list topics"`, ...).
    pub operation: &'a str,
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// How long until the next attempt.
    pub delay: Duration,
    /// Why the attempt failed.
    pub error: &'a Error,
}

/// A callback invoked on every retry, for metrics or tests (see
/// [`ConfigBuilder::on_retry`](crate::ConfigBuilder::on_retry)).
pub type RetryHook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Observes the progress of a retry loop (the client's health state implements it).
pub(crate) trait RetryObserver: Sync {
    /// An attempt failed with `error`; attempt `attempt + 1` follows after `delay`.
    fn retrying(&self, _operation: &str, _attempt: u32, _error: &Error) {}
    /// The operation succeeded.
    fn succeeded(&self) {}
    /// The operation was given up.
    fn gave_up(&self, _error: &Error) {}
    /// Whether `error` is worth another attempt (default: [`Error::is_retriable`]); an
    /// operation with its own transient codes (the transactional producer's
    /// CONCURRENT_TRANSACTIONS) widens it.
    fn is_retriable(&self, error: &Error) -> bool {
        error.is_retriable()
    }
}

impl RetryObserver for () {}

/// Runs `op` until it succeeds, fails with a permanent error, or the policy's budget is spent.
///
/// `op` receives the attempt number (from 1). Retriable errors ([`Error::is_retriable`]) are
/// retried after the policy's delay; the first permanent error is returned as it is.
pub(crate) async fn retry<T, F, Fut>(
    policy: &ReconnectPolicy,
    hook: Option<&RetryHook>,
    observer: &(dyn RetryObserver + Sync),
    operation: &str,
    mut op: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut schedule = policy.schedule();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match op(attempt).await {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(operation, attempt, "succeeded after retrying");
                }
                observer.succeeded();
                return Ok(v);
            }
            Err(e) if !observer.is_retriable(&e) => return Err(e),
            Err(e) => e,
        };
        let Some(delay) = schedule.next_backoff() else {
            let error = Error::RetriesExhausted {
                operation: operation.to_string(),
                attempts: attempt,
                elapsed: started.elapsed(),
                last_error: Box::new(error),
            };
            tracing::error!(operation, attempt, error = %error, "giving up");
            observer.gave_up(&error);
            return Err(error);
        };
        tracing::warn!(
            operation,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "attempt failed, retrying"
        );
        if let Some(hook) = hook {
            hook(&RetryEvent {
                operation,
                attempt,
                delay,
                error: &error,
            });
        }
        observer.retrying(operation, attempt, &error);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    fn io_error() -> Error {
        Error::Io {
            broker: "127.0.0.1:1".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_and_the_give_up_names_the_attempts() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter: 0.0,
            max_elapsed: Some(Duration::from_secs(3)),
        };
        let delays = Arc::new(Mutex::new(Vec::new()));
        let seen = delays.clone();
        let hook: RetryHook =
            Arc::new(move |e: &RetryEvent<'_>| seen.lock().unwrap().push(e.delay));
        let result: Result<()> = retry(&policy, Some(&hook), &(), "test op", |_| async {
            Err(io_error())
        })
        .await;
        let delays = delays.lock().unwrap().clone();
        assert_eq!(
            &delays[..4],
            &[100, 200, 400, 800].map(Duration::from_millis)[..]
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        match result {
            Err(Error::RetriesExhausted {
                attempts,
                operation,
                ..
            }) => {
                assert_eq!(attempts as usize, delays.len() + 1);
                assert_eq!(operation, "test op");
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[test]
    fn delay_for_attempt_grows_to_the_cap_within_the_jitter() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter: 0.0,
            max_elapsed: Some(Duration::from_secs(3)),
        };
        let delays: Vec<u128> = (1..=6)
            .map(|a| policy.delay_for_attempt(a).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        let jittered = ReconnectPolicy {
            jitter: 0.5,
            ..policy
        };
        for _ in 0..100 {
            let d = jittered.delay_for_attempt(2).as_millis();
            assert!((100..=300).contains(&d), "{d}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<()> = retry(&ReconnectPolicy::default(), None, &(), "op", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::broker(10, "t/0", None)) }
        })
        .await;
        assert!(matches!(result, Err(Error::Broker { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_failures_returns_the_value() {
        let result = retry(
            &ReconnectPolicy::default(),
            None,
            &(),
            "op",
            |attempt| async move {
                if attempt < 3 {
                    Err(io_error())
                } else {
                    Ok(attempt)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(result, 3);
    }
}
