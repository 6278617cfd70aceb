//! A bounded, time-limited "seen before?" cache (moka) for the processing runtime.
//!
//! A key goes through three steps: **claimed** (in progress) → **done** (the handler
//! succeeded) or **released** (it failed; a redelivery is processed again). The claim is one
//! atomic step for the key ([`Deduplicator::check_and_mark`]), so two tasks cannot
//! both claim the same key. A claim that is dropped without [`Claim::complete`] is released,
//! so a cancelled handler (shutdown, crash of the run task) never leaves a key stuck "in
//! progress".
//!
//! ```
//! use std::time::Duration;
//! use purekafka::dedup::{Check, Deduplicator};
//!
//! let dedup = Deduplicator::new(1_000, Duration::from_secs(60));
//! let Check::Claimed(claim) = dedup.check_and_mark("event-1") else { unreachable!() };
//! assert!(matches!(dedup.check_and_mark("event-1"), Check::InProgress));
//! claim.complete();
//! assert!(matches!(dedup.check_and_mark("event-1"), Check::Duplicate));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use moka::policy::EvictionPolicy;

use crate::record::ConsumedRecord;

/// `Slot::state` of a key whose handler succeeded.
const DONE: u64 = 0;
/// `Slot::state` of a key whose claim was released (failed or dropped): claimable again.
const RELEASED: u64 = u64::MAX;

/// What the cache holds for a key: its state, shared with the claim that inserted it, so
/// that completing a claim is one atomic store instead of a second cache operation. The
/// state is the claim's token while its handler runs, [`DONE`] or [`RELEASED`] after.
#[derive(Debug)]
struct Slot {
    state: AtomicU64,
}

/// The answer of [`Deduplicator::check_and_mark`].
#[derive(Debug)]
#[must_use = "a claim is released when dropped"]
pub enum Check {
    /// Not seen before: the caller owns the key now. Call [`Claim::complete`] after the
    /// handler succeeded; dropping the claim releases the key.
    Claimed(Claim),
    /// Processed before (within the TTL): skip it.
    Duplicate,
    /// Another task holds the claim and its handler is still running: ask again later.
    InProgress,
}

/// A bounded, time-limited cache of processed keys. Cheap to clone (clones share the cache):
/// share one between runners of the same process so that a successor skips what its
/// predecessor processed.
///
/// Cost: a lookup and, for a new key, one insert (completing a claim is an atomic store on
/// the key's slot); claims of one key are made atomic by a small striped lock rather than
/// moka's entry API (whose per-call initialisation bookkeeping cost more than the cache
/// itself). Keys are copied into their own allocation, so that the cache never keeps a
/// fetched record batch alive.
#[derive(Clone)]
pub struct Deduplicator {
    cache: moka::sync::Cache<Bytes, Arc<Slot>>,
    stripes: Arc<[Mutex<()>]>,
    next_token: Arc<AtomicU64>,
}

/// Lock stripes: claims of keys in different stripes never wait for each other.
const STRIPES: usize = 64;

impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduplicator")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Deduplicator {
    /// A cache of at most `capacity` keys (the least recently used ones are evicted first),
    /// each forgotten `ttl` after it was claimed.
    ///
    /// Size the capacity to the number of distinct keys expected within `ttl` (the window in
    /// which a producer retry or a redelivery can repeat a record).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Deduplicator {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                // Sized up front (up to 1M keys): growing moka's hash table from empty
                // rehashes every key at each doubling while a run fills it.
                .initial_capacity(capacity.min(1 << 20) as usize)
                .time_to_live(ttl)
                // Plain LRU: every new key is admitted. (moka's default TinyLFU admission
                // may turn away a new key while the cache is full, which would forget a
                // key just processed; it also costs a frequency-sketch update per insert.)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_token: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The lock of `key`'s stripe (FNV-1a of the key: only spreads contention, so it need
    /// not resist chosen keys; moka hashes with its own keyed hasher).
    fn stripe(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key.iter().take(64) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.stripes[(h % STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` if it was neither processed nor claimed: atomic for the key (one lock
    /// stripe covers every change of its entry).
    pub fn check_and_mark(&self, key: impl Into<Bytes>) -> Check {
        let key = key.into();
        let _stripe = self.stripe(&key);
        if let Some(slot) = self.cache.get(&key) {
            match slot.state.load(Ordering::Acquire) {
                DONE => return Check::Duplicate,
                RELEASED => {}
                _ => return Check::InProgress,
            }
        }
        // New, or released and not yet removed: claim it with a fresh slot.
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            state: AtomicU64::new(token),
        });
        let key = Bytes::copy_from_slice(&key);
        self.cache.insert(key.clone(), Arc::clone(&slot));
        Check::Claimed(Claim {
            dedup: self.clone(),
            key: Some(key),
            slot,
            token,
        })
    }

    /// Whether `key` is marked done.
    pub fn is_done(&self, key: &[u8]) -> bool {
        self.cache
            .get(key)
            .is_some_and(|s| s.state.load(Ordering::Acquire) == DONE)
    }

    /// Forgets every key.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Approximate number of keys held (moka updates it lazily).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether no key is held (see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `key` if it still holds `slot` (a released claim's).
    fn forget(&self, key: Bytes, slot: &Arc<Slot>) {
        let _stripe = self.stripe(&key);
        if self
            .cache
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(&current, slot))
        {
            self.cache.invalidate(&key);
        }
    }
}

/// A key claimed by [`Deduplicator::check_and_mark`]; released when dropped unless completed.
#[derive(Debug)]
pub struct Claim {
    dedup: Deduplicator,
    key: Option<Bytes>,
    slot: Arc<Slot>,
    token: u64,
}

impl Claim {
    /// Marks the key processed (the handler succeeded): redeliveries within the TTL are
    /// duplicates. An atomic store on the key's slot, no cache operation.
    pub fn complete(mut self) {
        if self.key.take().is_some() {
            let _ = self.slot.state.compare_exchange(
                self.token,
                DONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Releases the key (the handler failed): a redelivery is processed again.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let Some(key) = self.key.take() {
            let released = self
                .slot
                .state
                .compare_exchange(self.token, RELEASED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if released {
                self.dedup.forget(key, &self.slot);
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// A function computing a record's dedup key.
pub type KeyFn = Arc<dyn Fn(&ConsumedRecord) -> Option<Bytes> + Send + Sync>;

/// Where the dedup key of a record comes from.
///
/// The default is the `event_id` header ([`DedupKey::event_id`]), which producers stamp with a
/// unique id per event (purekafka with `default.headers`): never the record key, which names
/// an entity (a customer, an order) shared by many distinct events — deduplicating on it
/// would silently drop every event after the first for that entity within the TTL.
#[derive(Clone)]
pub enum DedupKey {
    /// The record key (records without a key are not deduplicated). Only right when the key
    /// is unique per event.
    RecordKey,
    /// The value of this header, e.g. `event_id` (records without it are not deduplicated).
    Header(String),
    /// A function of the record (`None`: not deduplicated).
    Fn(KeyFn),
}

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DedupKey::RecordKey => f.write_str("RecordKey"),
            DedupKey::Header(h) => f.debug_tuple("Header").field(h).finish(),
            DedupKey::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

impl Default for DedupKey {
    fn default() -> Self {
        DedupKey::event_id()
    }
}

impl DedupKey {
    /// The `event_id` header (the default; records without it are not deduplicated).
    pub fn event_id() -> Self {
        DedupKey::Header("event_id".into())
    }

    /// A key computed by `f`.
    pub fn from_fn(f: impl Fn(&ConsumedRecord) -> Option<Bytes> + Send + Sync + 'static) -> Self {
        DedupKey::Fn(Arc::new(f))
    }

    /// The dedup key of `record` (a cheap `Bytes` clone for keys and headers).
    pub fn of(&self, record: &ConsumedRecord) -> Option<Bytes> {
        match self {
            DedupKey::RecordKey => record.key.clone(),
            DedupKey::Header(name) => record.headers.get(name).cloned(),
            DedupKey::Fn(f) => f(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_complete_release_and_drop() {
        let d = Deduplicator::new(100, Duration::from_secs(60));
        let Check::Claimed(c) = d.check_and_mark("a") else {
            panic!()
        };
        assert!(matches!(d.check_and_mark("a"), Check::InProgress));
        c.release();
        let Check::Claimed(c) = d.check_and_mark("a") else {
            panic!("released key is claimable")
        };
        drop(c);
        let Check::Claimed(c) = d.check_and_mark("a") else {
            panic!("dropped claim released the key")
        };
        c.complete();
        assert!(matches!(d.check_and_mark("a"), Check::Duplicate));
        assert!(d.is_done(b"a"));
    }

    #[test]
    fn concurrent_claims_have_one_winner() {
        for round in 0..50 {
            let d = Deduplicator::new(1000, Duration::from_secs(60));
            let key = format!("k{round}");
            let winners = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        if let Check::Claimed(c) = d.check_and_mark(key.clone()) {
                            winners.fetch_add(1, Ordering::SeqCst);
                            std::mem::forget(c);
                        }
                    });
                }
            });
            assert_eq!(winners.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn keys_are_copied_out_of_the_record_buffer() {
        let d = Deduplicator::new(100, Duration::from_secs(60));
        let buffer = Bytes::from(vec![b'k'; 4096]);
        let key = buffer.slice(0..8);
        let Check::Claimed(c) = d.check_and_mark(key.clone()) else {
            panic!()
        };
        c.complete();
        drop(key);
        // Only `buffer` itself refers to the 4 KiB allocation now.
        assert!(buffer.is_unique());
        assert!(d.is_done(b"kkkkkkkk"));
    }

    #[test]
    fn a_released_key_can_be_claimed_once_more_by_one_of_many() {
        let d = Deduplicator::new(1000, Duration::from_secs(60));
        let Check::Claimed(c) = d.check_and_mark("r") else {
            panic!()
        };
        c.release();
        let winners = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if let Check::Claimed(c) = d.check_and_mark("r") {
                        winners.fetch_add(1, Ordering::SeqCst);
                        std::mem::forget(c);
                    }
                });
            }
        });
        assert_eq!(winners.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ttl_expiry_forgets() {
        let d = Deduplicator::new(100, Duration::from_millis(50));
        let Check::Claimed(c) = d.check_and_mark("x") else {
            panic!()
        };
        c.complete();
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(d.check_and_mark("x"), Check::Claimed(_)));
    }

    #[test]
    fn the_default_key_is_the_event_id_header_never_the_record_key() {
        let record = |key: &str, event: Option<&str>| {
            let mut headers = crate::record::Headers::new();
            if let Some(e) = event {
                headers.insert("event_id", e.to_string());
            }
            ConsumedRecord {
                topic: Arc::from("t"),
                partition: 0,
                offset: 0,
                key: Some(Bytes::from(key.to_string())),
                value: None,
                headers,
                timestamp: 0,
            }
        };
        let k = DedupKey::default();
        // Two events of one customer are two keys; a redelivery of one is the same key.
        let a = k.of(&record("customer-7", Some("e1")));
        let b = k.of(&record("customer-7", Some("e2")));
        assert_ne!(a, b);
        assert_eq!(a, k.of(&record("customer-7", Some("e1"))));
        assert_eq!(a.as_deref(), Some(&b"e1"[..]));
        // Without the header: not deduplicated (no key), not the record key.
        assert_eq!(k.of(&record("customer-7", None)), None);
        assert_eq!(
            DedupKey::RecordKey
                .of(&record("customer-7", None))
                .as_deref(),
            Some(&b"customer-7"[..])
        );
    }
}
