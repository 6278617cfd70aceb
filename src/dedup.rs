//! A bounded, time-limited "seen before?" cache for the processing runtime: keys in lock
//! stripes, their lifetimes in two generations kept by a moka cache.
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
//!
//! # Why generations
//!
//! One moka entry per key cost 5–10 µs per new key once the cache was full (`perf`, issue 14):
//! every eviction leaves a tombstone in moka's concurrent hash table, which rehashes a whole
//! segment every few thousand tombstones (re-hashing every live key), and each entry is about
//! six allocations (entry, key, two order-queue nodes, table bucket, value) freed one by one.
//! The runtime processes a record in well under a microsecond, so no per-key cache entry
//! fits. Here moka keeps **generations** instead: a key is claimed into the current
//! generation; a new generation starts every `capacity` keys or `ttl`; moka holds the last two
//! generations (`max_capacity`) for `2 × ttl` each (`time_to_live`) and its eviction listener
//! retires whole generations. Each key carries its claim time, so it is forgotten exactly
//! `ttl` after its claim; generations only bound the memory. Every stripe keeps one hash
//! table per live generation and drops a retired one whole (no per-key removal, so no
//! tombstones and no rehashing). A new key costs one keyed hash (foldhash, seeded at random
//! per deduplicator: fast and minimally DoS-resistant, hashbrown's own default; SipHash was
//! 8 % of a dedup-on run), one stripe lock, a probe of each of the two tables and an insert:
//! a 24-byte slot, the key's bytes appended to the table's arena (no allocation per key; the
//! arena goes whole with its generation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashTable;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

use crate::record::ConsumedRecord;

/// `ClaimedKey::state` of a key whose handler succeeded (claims hold their token, never 0).
const DONE: u32 = 0;

/// Generations alive at once: the current one (up to `capacity` keys) and the one before.
const GENERATIONS: u64 = 2;

/// Lock stripes: claims of keys in different stripes never wait for each other.
const STRIPES: usize = 64;

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

/// One key in a stripe's table: 24 bytes, its bytes in the table's arena. (Stored inline,
/// a 36-byte UUID made each slot 72 bytes; a table is at most 7/8 and, being a power of two,
/// often under half full, so slot size counts twice.)
struct ClaimedKey {
    /// When the key was claimed (ns since `KeyGenerations::epoch`).
    claimed: u64,
    /// Where the key's bytes start in the table's arena.
    key_at: u64,
    key_len: u32,
    /// The claim's token while its handler runs, [`DONE`] after.
    state: u32,
}

/// The keys one stripe holds of one generation: a hash table of slots and an arena with
/// their bytes, copied out of the records (so that the cache never keeps a fetched record
/// batch alive) and dropped whole with the generation.
#[derive(Default)]
struct Table {
    generation: u64,
    slots: HashTable<ClaimedKey>,
    arena: Vec<u8>,
}

impl Table {
    fn with_capacity(generation: u64, keys: usize) -> Table {
        Table {
            generation,
            slots: HashTable::with_capacity(keys),
            arena: Vec::new(),
        }
    }

    fn key_of<'a>(arena: &'a [u8], slot: &ClaimedKey) -> &'a [u8] {
        // In bounds: `insert` pushed these bytes and the arena only grows.
        let at = slot.key_at as usize;
        &arena[at..at + slot.key_len as usize]
    }

    fn find_key(&mut self, hash: u64, key: &[u8]) -> Option<&mut ClaimedKey> {
        let arena = &self.arena;
        self.slots
            .find_mut(hash, |s| Table::key_of(arena, s) == key)
    }

    fn remove_key(&mut self, hash: u64, key: &[u8]) {
        let arena = &self.arena;
        if let Ok(slot) = self
            .slots
            .find_entry(hash, |s| Table::key_of(arena, s) == key)
        {
            // Its bytes stay in the arena until the generation is dropped.
            slot.remove();
        }
    }

    /// Adds `key` (not in the table) claimed at `claimed` with `token`. `hasher` rehashes
    /// the keys if the table grows.
    fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        claimed: u64,
        token: u32,
        hasher: &foldhash::fast::RandomState,
    ) {
        let key_at = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        let arena = &self.arena;
        self.slots.insert_unique(
            hash,
            ClaimedKey {
                claimed,
                key_at,
                // A key longer than 4 GiB cannot be in a record (`message.max.bytes` is an i32).
                key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
                state: token,
            },
            |s| std::hash::BuildHasher::hash_one(hasher, Table::key_of(arena, s)),
        );
    }

    /// The slot of the claim holding `token` (unique among a stripe's claims in progress).
    fn find_claim(&mut self, hash: u64, token: u32) -> Option<&mut ClaimedKey> {
        self.slots.find_mut(hash, |s| s.state == token)
    }

    /// Removes the claim holding `token`; whether it was here.
    fn remove_claim(&mut self, hash: u64, token: u32) -> bool {
        match self.slots.find_entry(hash, |s| s.state == token) {
            Ok(slot) => {
                slot.remove();
                true
            }
            Err(_) => false,
        }
    }
}

/// The keys whose hash falls in one stripe: the current generation's and the previous one's.
struct Stripe {
    current: Table,
    previous: Table,
    /// The next claim's token, never [`DONE`]. It wraps after 2³² claims in the stripe, so it
    /// is unique among the stripe's claims in progress unless one lasts that long.
    next_token: u32,
    /// Claims not yet added to `KeyGenerations::claims` (added in batches: one shared counter
    /// updated per claim would bounce its cache line between threads).
    unreported: u64,
}

impl Stripe {
    /// Drops the tables of retired generations (below `oldest`), and starts a table for
    /// `generation` if it is newer than the current one (`expected`: keys it will hold).
    fn advance(&mut self, generation: u64, oldest: u64, expected: usize) {
        if self.current.generation < generation {
            let current = std::mem::replace(
                &mut self.current,
                Table::with_capacity(generation, expected),
            );
            self.previous = current;
        }
        if self.previous.generation < oldest && !self.previous.slots.is_empty() {
            self.previous = Table::default();
        }
        if self.current.generation < oldest && !self.current.slots.is_empty() {
            self.current.slots = HashTable::new();
        }
    }

    /// The live tables, newest first.
    fn live(&mut self, oldest: u64) -> impl Iterator<Item = &mut Table> {
        [&mut self.current, &mut self.previous]
            .into_iter()
            .filter(move |t| t.generation >= oldest)
    }
}

/// A stripe on a cache line of its own (two threads claiming keys in neighbouring stripes do
/// not share one). A claim holds its stripe, not the whole cache, so that claims on different
/// stripes touch no shared reference count.
#[repr(align(64))]
struct Padded(Mutex<Stripe>);

impl Padded {
    fn lock(&self) -> MutexGuard<'_, Stripe> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct KeyGenerations {
    stripes: Box<[Arc<Padded>]>,
    /// The live generations (the value is unused): moka evicts the oldest beyond
    /// [`GENERATIONS`] and expires each `ttl + span` after it started; its listener raises
    /// `oldest`.
    generations: moka::sync::Cache<u64, ()>,
    /// The generation new claims go to.
    current: AtomicU64,
    /// The oldest generation still alive: keys of older ones are forgotten.
    oldest: Arc<AtomicU64>,
    /// Claims made in the current generation, and when it ends (ns since `epoch`).
    claims: AtomicU64,
    deadline: AtomicU64,
    per_generation: u64,
    span: Duration,
    ttl: u64,
    epoch: Instant,
    /// Claims a stripe counts before it adds them to `claims`.
    report_every: u64,
    /// Keys a stripe's table of one generation is sized for.
    per_stripe: usize,
    rotating: Mutex<()>,
    hasher: foldhash::fast::RandomState,
}

/// A bounded, time-limited cache of processed keys. Cheap to clone (clones share the cache):
/// share one between runners of the same process so that a successor skips what its
/// predecessor processed.
///
/// Cost per new key: a keyed hash (SipHash, so that keys chosen by a producer cannot flood one
/// table slot), a stripe lock, one hash-table probe and insert (no allocation per key), and a
/// probe to complete. Memory: a 24-byte slot (tables are powers of two, so 1.1–2.3 slots per
/// key) plus the key's bytes; 1M keys of 36 bytes held 90 MB. Keys are
/// copied, so that the cache never keeps a fetched record batch alive.
#[derive(Clone)]
pub struct Deduplicator {
    inner: Arc<KeyGenerations>,
}

impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduplicator")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Deduplicator {
    /// A cache that remembers each key for `ttl` after its claim, and at least the last
    /// `capacity` keys.
    ///
    /// Keys beyond the capacity are forgotten oldest-claimed first, a generation at a time: a
    /// generation takes up to `capacity` keys or lasts `ttl`, and the current and the previous
    /// one are kept, so at least the `capacity` most recent keys (claimed within `ttl`) are
    /// remembered and at most `2 × capacity` are held (about 90 bytes each for 36-byte
    /// keys). Size the capacity to the number of distinct keys expected within `ttl` (the
    /// window in which a producer retry or a redelivery can repeat a record).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let per_generation = capacity.max(1);
        let span = ttl;
        let oldest = Arc::new(AtomicU64::new(0));
        let retired = Arc::clone(&oldest);
        let generations = moka::sync::Cache::builder()
            .max_capacity(GENERATIONS)
            .time_to_live(ttl.saturating_mul(GENERATIONS as u32))
            // Plain LRU: a new generation is always admitted, and as generations are never
            // read through moka, the least recently used one is the oldest.
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |generation: Arc<u64>, _, cause| {
                if matches!(cause, RemovalCause::Expired | RemovalCause::Size) {
                    retired.fetch_max(*generation + 1, Ordering::AcqRel);
                }
            })
            .build();
        generations.insert(0, ());
        let epoch = Instant::now();
        Deduplicator {
            inner: Arc::new(KeyGenerations {
                stripes: (0..STRIPES)
                    .map(|_| {
                        Arc::new(Padded(Mutex::new(Stripe {
                            current: Table::default(),
                            previous: Table::default(),
                            next_token: 1,
                            unreported: 0,
                        })))
                    })
                    .collect(),
                generations,
                current: AtomicU64::new(0),
                oldest,
                claims: AtomicU64::new(0),
                deadline: AtomicU64::new(nanos(span)),
                per_generation,
                span,
                ttl: nanos(ttl),
                epoch,
                report_every: (per_generation / (4 * STRIPES as u64)).clamp(1, 64),
                // Hashes spread keys over the stripes unevenly: room for 1/8 more than even.
                per_stripe: usize::try_from(per_generation / STRIPES as u64 * 9 / 8)
                    .unwrap_or(usize::MAX)
                    .min(1 << 20),
                rotating: Mutex::new(()),
                hasher: foldhash::fast::RandomState::default(),
            }),
        }
    }

    /// Claims `key` if it was neither processed nor claimed: atomic for the key (its stripe's
    /// lock covers the lookup and the insert). The key's bytes are copied when claimed.
    pub fn check_and_mark(&self, key: impl AsRef<[u8]>) -> Check {
        let key = key.as_ref();
        let inner = &self.inner;
        let hash = std::hash::BuildHasher::hash_one(&inner.hasher, key);
        let (generation, now) = inner.generation();
        let oldest = inner.oldest.load(Ordering::Acquire);
        let padded = inner.stripe(hash);
        let mut guard = padded.lock();
        let stripe = &mut *guard;
        stripe.advance(generation, oldest, inner.per_stripe);
        for table in stripe.live(oldest) {
            if let Some(slot) = table.find_key(hash, key) {
                if now.saturating_sub(slot.claimed) < inner.ttl {
                    return if slot.state == DONE {
                        Check::Duplicate
                    } else {
                        Check::InProgress
                    };
                }
                // Claimed longer than the TTL ago: forgotten, claimed anew below.
                table.remove_key(hash, key);
                break;
            }
        }
        let token = stripe.next_token;
        stripe.current.insert(hash, key, now, token, &inner.hasher);
        stripe.next_token = token.checked_add(1).unwrap_or(DONE + 1);
        stripe.unreported += 1;
        if stripe.unreported >= inner.report_every {
            inner.claims.fetch_add(stripe.unreported, Ordering::Relaxed);
            stripe.unreported = 0;
        }
        drop(guard);
        Check::Claimed(Claim {
            stripe: Some(Arc::clone(padded)),
            hash,
            token,
        })
    }

    /// Whether `key` is marked done.
    pub fn is_done(&self, key: &[u8]) -> bool {
        let inner = &self.inner;
        let hash = std::hash::BuildHasher::hash_one(&inner.hasher, key);
        let oldest = inner.oldest.load(Ordering::Acquire);
        let now = nanos(inner.epoch.elapsed());
        let mut stripe = inner.stripe(hash).lock();
        let done = stripe.live(oldest).find_map(|t| {
            t.find_key(hash, key)
                .map(|s| s.state == DONE && now.saturating_sub(s.claimed) < inner.ttl)
        });
        done == Some(true)
    }

    /// Forgets every key.
    pub fn clear(&self) {
        let inner = &self.inner;
        let _rotating = inner.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let next = inner.current.load(Ordering::Acquire) + 1;
        inner.generations.invalidate_all();
        inner.generations.insert(next, ());
        inner.claims.store(0, Ordering::Relaxed);
        inner
            .deadline
            .store(nanos(inner.epoch.elapsed() + inner.span), Ordering::Relaxed);
        inner.current.store(next, Ordering::Release);
        inner.oldest.fetch_max(next, Ordering::AcqRel);
    }

    /// Number of keys held (claimed or done; keys past their TTL count until their generation
    /// is retired).
    pub fn len(&self) -> u64 {
        let oldest = self.inner.oldest.load(Ordering::Acquire);
        self.inner
            .stripes
            .iter()
            .map(|p| {
                let mut stripe = p.lock();
                stripe
                    .live(oldest)
                    .map(|t| t.slots.len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Whether no key is held (see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl KeyGenerations {
    /// The stripe of `hash` (chosen by bits that hashbrown uses for neither the slot index
    /// nor the control byte).
    fn stripe(&self, hash: u64) -> &Arc<Padded> {
        &self.stripes[((hash >> 32) as usize) % STRIPES]
    }

    /// The generation a claim made now goes to: a new one when the current is full or its
    /// span is over (one caller starts it; the others go on with the current one meanwhile).
    /// Returns it with the time now (ns since `epoch`).
    fn generation(&self) -> (u64, u64) {
        let now = nanos(self.epoch.elapsed());
        if self.claims.load(Ordering::Relaxed) >= self.per_generation
            || now >= self.deadline.load(Ordering::Relaxed)
        {
            if let Ok(_rotating) = self.rotating.try_lock() {
                if self.claims.load(Ordering::Relaxed) >= self.per_generation
                    || now >= self.deadline.load(Ordering::Relaxed)
                {
                    let next = self.current.load(Ordering::Acquire) + 1;
                    self.generations.insert(next, ());
                    self.claims.store(0, Ordering::Relaxed);
                    self.deadline
                        .store(now.saturating_add(nanos(self.span)), Ordering::Relaxed);
                    self.current.store(next, Ordering::Release);
                    // Evicts the generation beyond the second and expires old ones (the
                    // listener raises `oldest`).
                    self.generations.run_pending_tasks();
                }
            }
        }
        (self.current.load(Ordering::Acquire), now)
    }
}

/// A key claimed by [`Deduplicator::check_and_mark`]; released when dropped unless completed.
#[must_use = "a claim is released when dropped"]
pub struct Claim {
    stripe: Option<Arc<Padded>>,
    hash: u64,
    token: u32,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// Marks the key processed (the handler succeeded): redeliveries within the TTL are
    /// duplicates.
    pub fn complete(mut self) {
        if let Some(padded) = self.stripe.take() {
            let (hash, token) = (self.hash, self.token);
            let mut guard = padded.lock();
            let stripe = &mut *guard;
            // The token is unique in the stripe: it finds this claim's slot, unless the key
            // was forgotten meanwhile (`clear`, or its generation retired).
            for table in [&mut stripe.current, &mut stripe.previous] {
                if let Some(slot) = table.find_claim(hash, token) {
                    slot.state = DONE;
                    break;
                }
            }
        }
    }

    /// Releases the key (the handler failed): a redelivery is processed again.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let Some(padded) = self.stripe.take() {
            let (hash, token) = (self.hash, self.token);
            let mut guard = padded.lock();
            let stripe = &mut *guard;
            for table in [&mut stripe.current, &mut stripe.previous] {
                if table.remove_claim(hash, token) {
                    break;
                }
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
    fn keys_of_any_length_are_told_apart_exactly() {
        let d = Deduplicator::new(1_000, Duration::from_secs(60));
        let long = vec![7u8; 5_000];
        let keys: [&[u8]; 6] = [b"", b"a", b"ab", b"abc", &long, &long[..4_999]];
        for key in keys {
            let Check::Claimed(claim) = d.check_and_mark(key) else {
                panic!("{} bytes: a new key must be claimed", key.len());
            };
            claim.complete();
        }
        for key in keys {
            assert!(matches!(d.check_and_mark(key), Check::Duplicate));
            assert!(d.is_done(key));
        }
        assert!(!d.is_done(b"abcd"));
        assert_eq!(d.len(), 6);
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
    fn capacity_forgets_the_oldest_generation_and_keeps_the_recent_keys() {
        // Generations of 80 keys, two alive.
        let d = Deduplicator::new(80, Duration::from_secs(3600));
        for i in 0..250 {
            let Check::Claimed(c) = d.check_and_mark(format!("k{i}")) else {
                panic!("k{i} is new")
            };
            c.complete();
        }
        assert!(d.len() <= 160, "{} keys held", d.len());
        // At least the capacity, the most recent keys, is remembered.
        for i in 170..250 {
            assert!(
                matches!(d.check_and_mark(format!("k{i}")), Check::Duplicate),
                "k{i} remembered"
            );
        }
        // The oldest are forgotten, and claimable once more (exactly once).
        let Check::Claimed(c) = d.check_and_mark("k0") else {
            panic!("k0 forgotten")
        };
        c.complete();
        assert!(matches!(d.check_and_mark("k0"), Check::Duplicate));
    }

    #[test]
    fn each_key_is_forgotten_ttl_after_its_own_claim_not_its_generations() {
        let ttl = Duration::from_millis(600);
        let d = Deduplicator::new(1000, ttl);
        let Check::Claimed(a) = d.check_and_mark("a") else {
            panic!()
        };
        a.complete();
        std::thread::sleep(Duration::from_millis(350));
        let Check::Claimed(b) = d.check_and_mark("b") else {
            panic!()
        };
        let b_claimed = std::time::Instant::now();
        b.complete();
        std::thread::sleep(Duration::from_millis(350));
        // "a" is older than the TTL: claimable again, once.
        let Check::Claimed(again) = d.check_and_mark("a") else {
            panic!("a is past its TTL")
        };
        again.complete();
        assert!(matches!(d.check_and_mark("a"), Check::Duplicate));
        // "b" (one generation with "a") is remembered while younger than the TTL (checked
        // only if this thread was not held up past it).
        let b_done = d.is_done(b"b");
        if b_claimed.elapsed() < ttl {
            assert!(b_done, "b is younger than its TTL");
        }
    }

    #[test]
    fn long_keys_and_keys_differing_only_in_length() {
        let d = Deduplicator::new(1000, Duration::from_secs(60));
        let long = "x".repeat(300);
        for k in [long.clone(), "x".repeat(40), "x".repeat(41), String::new()] {
            let Check::Claimed(c) = d.check_and_mark(k.clone()) else {
                panic!("{} bytes: new", k.len())
            };
            c.complete();
        }
        assert!(matches!(d.check_and_mark(long.clone()), Check::Duplicate));
        assert!(d.is_done(long.as_bytes()));
        assert!(!d.is_done("x".repeat(39).as_bytes()));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn clear_forgets_and_a_stale_claim_does_not_come_back() {
        let d = Deduplicator::new(1000, Duration::from_secs(60));
        let Check::Claimed(done) = d.check_and_mark("a") else {
            panic!()
        };
        done.complete();
        let Check::Claimed(stale) = d.check_and_mark("b") else {
            panic!()
        };
        d.clear();
        assert!(d.is_empty());
        // "b" is claimable again; the claim from before `clear` completes nothing.
        let Check::Claimed(fresh) = d.check_and_mark("b") else {
            panic!("b forgotten by clear")
        };
        stale.complete();
        assert!(matches!(d.check_and_mark("b"), Check::InProgress));
        fresh.complete();
        assert!(matches!(d.check_and_mark("b"), Check::Duplicate));
        assert!(matches!(d.check_and_mark("a"), Check::Claimed(_)));
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
