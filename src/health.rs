//! Connection health, as reported by [`Client::health`](crate::Client::health) to a service's
//! health endpoint.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::reconnect::RetryObserver;

/// The client's view of its connection to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last request to the cluster succeeded.
    Connected,
    /// Requests are failing with connection errors and are being retried.
    Reconnecting {
        /// Consecutive failed attempts since the connection was lost.
        attempt: u32,
        /// When the connection was lost.
        since: SystemTime,
        /// The last failure.
        last_error: String,
    },
    /// Retries ran out: the cluster is unreachable. Requests still try again, and health
    /// returns to `Connected` once one succeeds.
    Down {
        /// When the connection was lost.
        since: SystemTime,
        /// The last failure.
        last_error: String,
    },
    /// Kafka is disabled by configuration (`KAFKA_ENABLED=false`).
    Disabled,
}

impl Health {
    /// Whether a health endpoint should answer "ok" (connected, or disabled on purpose).
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Connected | Health::Disabled)
    }
}

/// Shared, updated health state. One small lock, touched only on connects, failures,
/// recoveries and reads; the hot path never takes it.
///
/// Every connection the client opens (the shared per-broker connections of the producer and
/// metadata, the fetchers' and the group coordinator's own connections) reports its connect
/// outcome here, keyed by broker address, and so does the background probe. Health returns
/// to `Connected` only when no broker the client needs is failing.
#[derive(Debug)]
pub(crate) struct HealthState {
    state: Mutex<Health>,
    /// Broker addresses whose last connect or probe failed with a connection error.
    failing: Mutex<HashSet<String>>,
    /// After this long without success, `Reconnecting` becomes `Down`.
    down_after: Option<Duration>,
}

impl HealthState {
    pub(crate) fn new(initial: Health, down_after: Option<Duration>) -> Self {
        HealthState {
            state: Mutex::new(initial),
            failing: Mutex::new(HashSet::new()),
            down_after,
        }
    }

    pub(crate) fn get(&self) -> Health {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker addresses currently failing (for the probe, which retries them).
    pub(crate) fn failing_brokers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.failing().iter().cloned().collect();
        v.sort();
        v
    }

    /// A connection to `addr` failed (connect, or a probe on an open connection).
    pub(crate) fn connection_failed(&self, addr: &str, error: &Error) {
        if !error.is_connection_error() {
            return;
        }
        self.failing().insert(addr.to_string());
        self.failed(error);
    }

    /// A connection to `addr` was opened, or answered a probe.
    pub(crate) fn connection_ok(&self, addr: &str) {
        let none_failing = {
            let mut failing = self.failing();
            failing.remove(addr);
            failing.is_empty()
        };
        if none_failing {
            self.recovered();
        }
    }

    /// Stops tracking `addr` (the broker left the cluster's metadata).
    pub(crate) fn forget(&self, addr: &str) {
        let none_failing = {
            let mut failing = self.failing();
            failing.remove(addr) && failing.is_empty()
        };
        if none_failing {
            self.recovered();
        }
    }

    fn update(&self, f: impl FnOnce(&mut Health)) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    /// Records a failed attempt, if the error is about connectivity.
    pub(crate) fn failed(&self, error: &Error) {
        if !error.is_connection_error() {
            return;
        }
        let last_error = error.to_string();
        let down_after = self.down_after;
        self.update(|h| match h {
            Health::Disabled => {}
            Health::Connected => {
                let previous = std::mem::replace(
                    h,
                    Health::Reconnecting {
                        attempt: 1,
                        since: SystemTime::now(),
                        last_error: last_error.clone(),
                    },
                );
                tracing::warn!(?previous, error = %last_error, "connection to the cluster lost");
            }
            Health::Reconnecting {
                attempt,
                since,
                last_error: last,
            } => {
                *attempt += 1;
                *last = last_error;
                let lost_for = since.elapsed().unwrap_or_default();
                if down_after.is_some_and(|d| lost_for >= d) {
                    let since = *since;
                    tracing::error!(?lost_for, error = %last, "cluster unreachable: health is Down");
                    *h = Health::Down {
                        since,
                        last_error: last.clone(),
                    };
                }
            }
            Health::Down {
                last_error: last, ..
            } => *last = last_error,
        });
    }

    /// Records a successful request; health stays `Reconnecting` while a broker is failing.
    pub(crate) fn recovered(&self) {
        if !self.failing().is_empty() {
            return;
        }
        self.update(|h| {
            if matches!(h, Health::Reconnecting { .. } | Health::Down { .. }) {
                tracing::info!(previous = ?h, "connection to the cluster re-established");
                *h = Health::Connected;
            }
        });
    }
}

impl RetryObserver for HealthState {
    fn retrying(&self, _operation: &str, _attempt: u32, error: &Error) {
        self.failed(error);
    }
    fn succeeded(&self) {
        self.recovered();
    }
    fn gave_up(&self, error: &Error) {
        let Error::RetriesExhausted { last_error, .. } = error else {
            return;
        };
        if !last_error.is_connection_error() {
            return;
        }
        let text = last_error.to_string();
        self.update(|h| {
            let since = match h {
                Health::Reconnecting { since, .. } | Health::Down { since, .. } => *since,
                Health::Connected => SystemTime::now(),
                Health::Disabled => return,
            };
            *h = Health::Down {
                since,
                last_error: text,
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Error {
        Error::Io {
            broker: "b:1".into(),
            source: std::sync::Arc::new(std::io::ErrorKind::ConnectionRefused.into()),
        }
    }

    #[test]
    fn connected_reconnecting_connected() {
        let h = HealthState::new(Health::Connected, None);
        h.failed(&refused());
        h.failed(&refused());
        match h.get() {
            Health::Reconnecting { attempt, .. } => assert_eq!(attempt, 2),
            other => panic!("{other:?}"),
        }
        h.recovered();
        assert_eq!(h.get(), Health::Connected);
    }

    #[test]
    fn broker_application_errors_do_not_touch_health() {
        let h = HealthState::new(Health::Connected, None);
        h.failed(&Error::broker(6, "t/0", None));
        assert_eq!(h.get(), Health::Connected);
    }

    #[test]
    fn connected_again_only_when_no_broker_is_failing() {
        let h = HealthState::new(Health::Connected, None);
        h.connection_failed("a:1", &refused());
        h.connection_failed("b:1", &refused());
        h.connection_ok("a:1");
        h.recovered();
        assert!(
            matches!(h.get(), Health::Reconnecting { .. }),
            "{:?}",
            h.get()
        );
        h.connection_ok("b:1");
        assert_eq!(h.get(), Health::Connected);
        h.connection_failed("c:1", &refused());
        h.forget("c:1");
        assert_eq!(h.get(), Health::Connected);
    }

    #[test]
    fn long_outage_is_down() {
        let h = HealthState::new(Health::Connected, Some(Duration::ZERO));
        h.failed(&refused());
        h.failed(&refused());
        assert!(matches!(h.get(), Health::Down { .. }));
        assert!(!h.get().is_ok());
    }
}
