//! A fast zstd match finder for ruzstd's encoder: [`FastMatcher`] implements
//! [`ruzstd::encoding::Matcher`], the extension point through which ruzstd's
//! `FrameCompressor` asks for matches, and [`compress_frame`] writes one standard zstd frame
//! with it (ruzstd still does the framing and the entropy stage: Huffman literals, FSE
//! sequences).
//!
//! The strategy is zstd's "fast" one (as lz4's): one hash table indexed by a hash of the next
//! 5 bytes holds the last position seen with that hash; each position probes it
//! once, a candidate is verified byte by byte (a hash collision is just a miss), extended
//! forwards and backwards, and emitted if it is at least 5 bytes long. Runs
//! without a match are skipped faster the longer they get, so incompressible input costs
//! little. ruzstd's own matcher instead probes a freshly allocated table per 128 KiB block
//! with a division per position; this one keeps its table between frames.
//!
//! Blocks ("spaces" in the trait) are at most 128 KiB, the trait's limit and zstd's block
//! maximum. A match may reach into the previous block of the same frame, never further back
//! than the window the frame header announces ([`Matcher::window_size`]), and never into an
//! earlier frame: positions are counted across frames so the table survives
//! [`Matcher::reset`] without being cleared, and entries from before the current frame's
//! first byte are simply treated as misses.

use std::cell::RefCell;

use ruzstd::encoding::{CompressionLevel, FrameCompressor, Matcher, Sequence};

/// The largest space (one zstd block) handed to the encoder: the trait's limit.
pub const BLOCK: usize = 128 * 1024;
/// The largest window announced in a frame header (and so the farthest back a match
/// reaches).
const MAX_WINDOW: usize = 128 * 1024;
/// log2 of the hash table's entries (16 K entries of 4 bytes: 64 KiB, fits a core's L2).
const HASH_LOG: u32 = 14;
/// Bytes hashed per position.
const HASH_BYTES: usize = 5;
/// Shortest match emitted (zstd's format allows 3; shorter matches than this rarely pay with
/// ruzstd's entropy stage, which does not use repeat offsets).
const MIN_MATCH: usize = 5;
/// The probe step grows by one every `1 << SKIP_LOG` bytes without a match.
const SKIP_LOG: u32 = 7;
/// Positions are `u32`s counted across frames; past this the table is cleared and counting
/// restarts (after about 4 GiB compressed on one thread).
const POS_LIMIT: u32 = u32::MAX - 4 * BLOCK as u32;

/// A single-probe hash-table match finder for ruzstd's zstd encoder (see the module docs).
///
/// Reusable across frames: [`Matcher::reset`] starts a new frame without clearing the table.
/// Call [`FastMatcher::expect_input`] before each frame to size its blocks and window to the
/// input; without it, blocks are 128 KiB and the window 128 KiB.
pub struct FastMatcher {
    /// Hash of `HASH_BYTES` bytes → the last absolute position seen with that hash.
    table: Vec<u32>,
    /// The block being matched (the last committed space).
    cur: Vec<u8>,
    /// Absolute position of `cur[0]`.
    cur_base: u32,
    /// The block before `cur` in the same frame (empty at a frame's first block).
    prev: Vec<u8>,
    /// Absolute position of the current frame's first byte: table entries below it belong to
    /// earlier frames.
    frame_start: u32,
    /// Spare buffers for [`Matcher::get_next_space`].
    pool: Vec<Vec<u8>>,
    /// Input bytes still expected in this frame, if the caller said.
    remaining: Option<usize>,
    /// The window announced for this frame.
    window: usize,
    /// Where positions restart (a field so tests can reach it).
    pos_limit: u32,
    /// The current block's sequences, found before any is handed to the encoder.
    seqs: Vec<Seq>,
}

impl Default for FastMatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl FastMatcher {
    /// A matcher with no tables yet: it allocates them on first use.
    pub const fn new() -> Self {
        Self {
            table: Vec::new(),
            cur: Vec::new(),
            cur_base: 0,
            prev: Vec::new(),
            frame_start: 0,
            pool: Vec::new(),
            remaining: None,
            window: MAX_WINDOW,
            pos_limit: POS_LIMIT,
            seqs: Vec::new(),
        }
    }

    /// Says that the next frame holds exactly `len` bytes: its blocks are sized to the input
    /// (no zero-filling of 128 KiB per small frame, no empty last block) and its window is
    /// the smallest power of two of at least `len` (1 KiB at least, 128 KiB at most). A wrong
    /// figure still yields a correct frame, only a less efficient one.
    pub fn expect_input(&mut self, len: usize) {
        self.remaining = Some(len);
        self.window = len.clamp(1024, MAX_WINDOW).next_power_of_two();
    }

    /// The position just past every byte seen so far.
    fn end(&self) -> u32 {
        self.cur_base + self.cur.len() as u32
    }

    fn recycle(&mut self, mut space: Vec<u8>) {
        if space.capacity() > 0 && self.pool.len() < 3 {
            space.clear();
            self.pool.push(space);
        }
    }

    /// Moves to a new position epoch: clears the table, drops the history.
    fn restart_positions(&mut self) {
        self.table.iter_mut().for_each(|e| *e = 0);
        let cur = std::mem::take(&mut self.cur);
        let prev = std::mem::take(&mut self.prev);
        self.recycle(cur);
        self.recycle(prev);
        self.cur_base = 0;
        self.frame_start = 0;
    }

    /// Indexes the current block position by position without matching (the encoder stores
    /// such a block as RLE; later blocks may still match into it).
    fn index_all(&mut self) {
        if self.cur.len() < 8 {
            return;
        }
        let table = &mut self.table;
        for ip in 0..=self.cur.len() - 8 {
            table[hash(read_u64(&self.cur, ip))] = self.cur_base + ip as u32;
        }
    }

    /// Hands the current block's sequences to the encoder, or the whole block as literals if
    /// ruzstd could not entropy-code them (see [`encodable`]).
    fn emit(&self, mut handle_sequence: impl for<'a> FnMut(Sequence<'a>)) {
        let cur = &self.cur[..];
        if encodable(cur, &self.seqs) {
            for m in &self.seqs {
                let literals = &cur[m.lit_start as usize..m.lit_end as usize];
                if m.match_len == 0 {
                    handle_sequence(Sequence::Literals { literals });
                } else {
                    handle_sequence(Sequence::Triple {
                        literals,
                        offset: m.offset as usize,
                        match_len: m.match_len as usize,
                    });
                }
            }
        } else if !cur.is_empty() {
            handle_sequence(Sequence::Literals { literals: cur });
        }
    }

    /// Finds the matches of the current block into `self.seqs` (the last entry, with
    /// `match_len` 0, holds the trailing literals if any).
    fn find_matches(&mut self) {
        self.seqs.clear();
        let seqs = &mut self.seqs;
        let cur = &self.cur[..];
        let len = cur.len();
        let prev = &self.prev[..];
        let base = self.cur_base;
        let prev_base = base - prev.len() as u32;
        // The lowest position a match may start at: the frame's first byte still held.
        let lowest = prev_base.max(self.frame_start);
        let window = self.window as u32;
        let table = &mut self.table[..];

        // The byte at absolute position `pos` (which is in `prev` or `cur`).
        let byte_at = |pos: u32| -> u8 {
            if pos >= base {
                cur[(pos - base) as usize]
            } else {
                prev[(pos - prev_base) as usize]
            }
        };

        // The first sequence keeps at least one literal (see `encodable`), so matching
        // starts at the second byte and never extends back over the first.
        let mut anchor = 0usize; // first byte not yet covered by a sequence
        let mut floor = 1usize; // backward extension stops here
        let mut ip = 1usize;
        while ip + 8 <= len {
            let v = read_u64(cur, ip);
            let h = hash(v);
            let candidate = table[h];
            let pos = base + ip as u32;
            table[h] = pos;

            // Valid if it lies in this frame's held bytes, before `pos`, within the window.
            let reach = (pos - lowest).min(window);
            let offset = pos.wrapping_sub(candidate);
            let mut found = 0usize;
            if offset.wrapping_sub(1) < reach {
                found = if candidate >= base {
                    common_prefix(&cur[(candidate - base) as usize..], &cur[ip..])
                } else {
                    let from = &prev[(candidate - prev_base) as usize..];
                    let n = common_prefix(from, &cur[ip..]);
                    if n == from.len() {
                        // The match runs on past the end of `prev` into `cur`.
                        n + common_prefix(cur, &cur[ip + n..])
                    } else {
                        n
                    }
                };
            }
            if found < MIN_MATCH {
                ip += 1 + ((ip - anchor) >> SKIP_LOG);
                continue;
            }

            // Extend backwards over literals not yet emitted.
            let mut start = ip;
            let mut from = candidate;
            while start > floor && from > lowest && byte_at(from - 1) == cur[start - 1] {
                start -= 1;
                from -= 1;
            }
            let match_len = found + (ip - start);
            seqs.push(Seq {
                lit_start: anchor as u32,
                lit_end: start as u32,
                offset,
                match_len: match_len as u32,
            });
            let end = start + match_len;
            // Index two positions inside the match: cheap, and helps the next matches.
            for at in [start + 2, end - 2] {
                if at + 8 <= len && at > ip {
                    table[hash(read_u64(cur, at))] = base + at as u32;
                }
            }
            anchor = end;
            floor = end;
            ip = end;
        }
        if anchor < len {
            seqs.push(Seq {
                lit_start: anchor as u32,
                lit_end: len as u32,
                offset: 0,
                match_len: 0,
            });
        }
    }
}

/// One sequence of a block, as offsets into it (`match_len` 0: trailing literals only).
struct Seq {
    lit_start: u32,
    lit_end: u32,
    offset: u32,
    match_len: u32,
}

/// Whether ruzstd 0.9's entropy stage can encode these sequences of `block`: it panics when
/// every match has zero literals before it (its FSE table builder cannot handle a single
/// literal-length code 0) and when more than 1,024 literals are all one byte value (its
/// Huffman table builder needs two symbols). The matcher avoids the first by construction;
/// a block that would hit either is sent as literals only, which ruzstd handles (it stores a
/// block of one repeated byte as RLE before asking the matcher).
fn encodable(block: &[u8], seqs: &[Seq]) -> bool {
    let mut matches = false;
    let mut literals_before_a_match = false;
    let mut literal_count = 0usize;
    let mut first: Option<u8> = None;
    let mut mixed = false;
    for m in seqs {
        let literals = &block[m.lit_start as usize..m.lit_end as usize];
        if m.match_len > 0 {
            matches = true;
            literals_before_a_match |= !literals.is_empty();
        }
        literal_count += literals.len();
        if !mixed {
            if let Some(&b) = literals.first() {
                let byte = *first.get_or_insert(b);
                mixed = literals.iter().any(|&x| x != byte);
            }
        }
    }
    (!matches || literals_before_a_match) && (literal_count <= 1024 || mixed)
}

#[inline(always)]
fn read_u64(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
}

/// Hash of the low [`HASH_BYTES`] bytes of `v` into [`HASH_LOG`] bits (a multiplicative
/// hash: the product's top bits depend on every kept byte).
#[inline(always)]
fn hash(v: u64) -> usize {
    ((v << (64 - 8 * HASH_BYTES)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HASH_LOG)) as usize
}

/// How many leading bytes `a` and `b` share.
#[inline(always)]
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let max = a.len().min(b.len());
    let mut n = 0;
    while n + 8 <= max {
        let x = read_u64(a, n) ^ read_u64(b, n);
        if x != 0 {
            return n + (x.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while n < max && a[n] == b[n] {
        n += 1;
    }
    n
}

impl Matcher for FastMatcher {
    fn get_next_space(&mut self) -> Vec<u8> {
        // One more byte than the input left, so the encoder's read sees the end in this space
        // and marks it the last block (an exactly full space would cost an empty extra block).
        let len = self
            .remaining
            .map_or(BLOCK, |left| left.saturating_add(1).min(BLOCK));
        let mut space = self.pool.pop().unwrap_or_default();
        space.clear();
        space.resize(len, 0);
        space
    }

    fn get_last_space(&mut self) -> &[u8] {
        &self.cur
    }

    fn commit_space(&mut self, space: Vec<u8>) {
        if let Some(left) = &mut self.remaining {
            *left = left.saturating_sub(space.len());
        }
        let space_len = space.len().min(BLOCK);
        if self.end() as usize + space_len > self.pos_limit as usize {
            self.restart_positions();
        }
        if !self.cur.is_empty() {
            let prev = std::mem::replace(&mut self.prev, std::mem::take(&mut self.cur));
            self.recycle(prev);
            self.cur_base += self.prev.len() as u32;
        } else {
            // An empty current block adds nothing to the window; drop it.
            let cur = std::mem::take(&mut self.cur);
            self.recycle(cur);
        }
        self.cur = space;
        if self.table.is_empty() {
            self.table = vec![0; 1 << HASH_LOG];
        }
    }

    fn skip_matching(&mut self) {
        self.index_all();
    }

    fn start_matching(&mut self, handle_sequence: impl for<'a> FnMut(Sequence<'a>)) {
        self.find_matches();
        self.emit(handle_sequence);
    }

    fn reset(&mut self, _level: CompressionLevel) {
        let next = self.end();
        let cur = std::mem::take(&mut self.cur);
        let prev = std::mem::take(&mut self.prev);
        self.recycle(cur);
        self.recycle(prev);
        self.cur_base = next;
        self.frame_start = next;
        if next > self.pos_limit - BLOCK as u32 {
            self.restart_positions();
        }
    }

    fn window_size(&self) -> u64 {
        self.window as u64
    }
}

/// The encoder's source: a copy of the batch. ruzstd's `FrameCompressor` can only be kept
/// between calls (sparing it the three default FSE tables it builds when created) if its
/// source type is `'static`, so the input is copied in; the copy costs less than the tables.
#[derive(Default)]
struct Source {
    data: Vec<u8>,
    at: usize,
}

impl std::io::Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.data[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

type Compressor = FrameCompressor<Source, Vec<u8>, FastMatcher>;

/// Buffers above this are not kept for the next call (a thread keeps at most this much of
/// a past batch).
const KEEP_BUFFER: usize = 2 << 20;

/// Compresses `input` as one zstd frame (ruzstd's "fastest" level, its framing and entropy
/// stage, with [`FastMatcher`]) appended to `out`. The compressor and its matcher are kept
/// per thread, so their tables and buffers are allocated once per thread, not per batch.
pub fn compress_frame(input: &[u8], out: &mut bytes::BytesMut) {
    thread_local! {
        static COMPRESSOR: RefCell<Option<Box<Compressor>>> = const { RefCell::new(None) };
    }
    let mut c = COMPRESSOR
        .with(|c| c.borrow_mut().take())
        .unwrap_or_else(|| {
            let mut c =
                FrameCompressor::new_with_matcher(FastMatcher::new(), CompressionLevel::Fastest);
            c.set_source(Source::default());
            c.set_drain(Vec::new());
            Box::new(c)
        });
    let mut matcher = c.replace_matcher(FastMatcher::new());
    matcher.expect_input(input.len());
    c.replace_matcher(matcher);
    if let Some(source) = c.source_mut() {
        source.data.clear();
        source.data.extend_from_slice(input);
        source.at = 0;
    }
    if let Some(drain) = c.drain_mut() {
        drain.clear();
    }
    c.compress();
    if let Some(drain) = c.drain_mut() {
        out.extend_from_slice(drain);
        if drain.capacity() > KEEP_BUFFER {
            *drain = Vec::new();
        }
    }
    if let Some(source) = c.source_mut() {
        if source.data.capacity() > KEEP_BUFFER {
            source.data = Vec::new();
        }
    }
    COMPRESSOR.with(|slot| *slot.borrow_mut() = Some(c));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    /// Bytes from a small alphabet with copied runs: many short and long matches at every
    /// distance, some beyond the window.
    fn matchy(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let r = rng.next();
            if out.len() > 16 && r.is_multiple_of(3) {
                let back = 1 + (rng.next() as usize % out.len().min(300_000));
                let n = 3 + (rng.next() as usize % 200);
                let from = out.len() - back;
                for i in 0..n {
                    out.push(out[from + i]);
                }
            } else {
                out.push(b"abcd"[(r >> 8) as usize % 4]);
            }
        }
        out.truncate(len);
        out
    }

    /// A Kafka-like record section: varint-framed JSON records with repeated field names.
    fn records(len: usize) -> Vec<u8> {
        let mut rng = Rng(7);
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < len {
            let x = rng.next();
            let value = format!(
                r#"{{"event_id":"{x:016x}","type":"order.created","customer":{},"amount_cents":{},"seq":{i}}}"#,
                x % 100_000,
                (x >> 20) % 1_000_000
            );
            out.extend_from_slice(&[0, 0, (i % 128) as u8, 1]);
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn inputs() -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = vec![
            ("empty".into(), vec![]),
            ("1 byte".into(), vec![42]),
            ("7 bytes".into(), b"abcabca".to_vec()),
            ("9 bytes".into(), b"abcdabcda".to_vec()),
            ("random 300 KiB".into(), random(300 << 10, 1)),
            ("zeros 300 KiB".into(), vec![0; 300 << 10]),
            ("zeros then text".into(), {
                let mut z = vec![0; BLOCK];
                z.extend(records(50_000));
                z
            }),
            ("abc repeated".into(), b"abc".repeat(100_000)),
            ("records 16 KiB".into(), records(16 << 10)),
            ("records 3 MiB".into(), records(3 << 20)),
            ("matchy 2 MiB".into(), matchy(2 << 20, 3)),
        ];
        for len in [BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5] {
            v.push((format!("records {len}"), records(len)));
            v.push((format!("matchy {len}"), matchy(len, len as u64)));
        }
        v
    }

    fn ruzstd_decode(frame: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut rest = frame;
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&mut rest)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(rest.is_empty(), "one frame, nothing after it");
        out
    }

    /// One frame through a given matcher, optionally without the input hint.
    fn compress_with(matcher: FastMatcher, input: &[u8], hint: bool) -> (Vec<u8>, FastMatcher) {
        let mut matcher = matcher;
        if hint {
            matcher.expect_input(input.len());
        } else {
            matcher.remaining = None;
            matcher.window = MAX_WINDOW;
        }
        let mut out = Vec::new();
        let mut c = FrameCompressor::new_with_matcher(matcher, CompressionLevel::Fastest);
        c.set_source(input);
        c.set_drain(&mut out);
        c.compress();
        let m = c.replace_matcher(FastMatcher::new());
        (out, m)
    }

    #[test]
    fn frames_round_trip_through_ruzstd() {
        for (name, input) in inputs() {
            // Appended behind what `out` holds (the producer's batch header).
            let mut packed = bytes::BytesMut::from(&b"header"[..]);
            compress_frame(&input, &mut packed);
            assert_eq!(&packed[..6], b"header");
            assert_eq!(ruzstd_decode(&packed[6..]), input, "{name}");
            let (packed, _) = compress_with(FastMatcher::new(), &input, false);
            assert_eq!(ruzstd_decode(&packed), input, "{name} without a hint");
        }
    }

    #[test]
    fn many_shapes_of_input_encode_without_panicking_and_round_trip() {
        let mut rng = Rng(99);
        let mut m = FastMatcher::new();
        for i in 0..300u64 {
            let len = match i % 4 {
                0 => rng.next() as usize % 64,
                1 => rng.next() as usize % 5000,
                2 => rng.next() as usize % 70_000,
                _ => rng.next() as usize % 300_000,
            };
            // Alphabets of 1 to 256 symbols, in runs of random length.
            let symbols = 1 + (rng.next() % 256) as u8 as usize;
            let max_run = 1 + (rng.next() % 40) as usize;
            let mut input = Vec::with_capacity(len);
            while input.len() < len {
                let b = (rng.next() as usize % symbols) as u8;
                let run = 1 + rng.next() as usize % max_run;
                input.extend(std::iter::repeat_n(b, run.min(len - input.len())));
            }
            if i % 5 == 0 {
                input.extend(matchy(len / 2, i));
            }
            let (packed, back) = compress_with(m, &input, i % 7 != 0);
            m = back;
            assert!(ruzstd_decode(&packed) == input, "shape {i}");
        }
    }

    #[test]
    fn compressible_input_shrinks_and_random_input_does_not_grow_much() {
        let mut packed = bytes::BytesMut::new();
        let input = records(1 << 20);
        compress_frame(&input, &mut packed);
        assert!(packed.len() < input.len() / 3, "{} bytes", packed.len());
        let input = random(1 << 20, 9);
        packed.clear();
        compress_frame(&input, &mut packed);
        assert!(packed.len() < input.len() + 100, "{} bytes", packed.len());
    }

    /// Drives the matcher as ruzstd's encoder does and replays its sequences: every offset
    /// must lie within the announced window and within this frame's bytes, every match must
    /// be at least 3 bytes, and the replay must give back the input.
    fn replay(matcher: &mut FastMatcher, input: &[u8], hint: bool) {
        matcher.reset(CompressionLevel::Fastest);
        if hint {
            matcher.expect_input(input.len());
        }
        let window = matcher.window_size() as usize;
        let mut out: Vec<u8> = Vec::new();
        let mut rest = input;
        loop {
            let mut space = matcher.get_next_space();
            assert!(!space.is_empty() && space.len() <= BLOCK);
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            space.truncate(n);
            rest = &rest[n..];
            if n == 0 {
                break;
            }
            matcher.commit_space(space);
            assert_eq!(matcher.get_last_space(), &input[out.len()..out.len() + n]);
            let block_end = out.len() + n;
            matcher.start_matching(|seq| match seq {
                Sequence::Literals { literals } => out.extend_from_slice(literals),
                Sequence::Triple {
                    literals,
                    offset,
                    match_len,
                } => {
                    out.extend_from_slice(literals);
                    assert!(match_len >= 3, "match of {match_len}");
                    assert!(offset >= 1 && offset <= window, "offset {offset}");
                    assert!(offset <= out.len(), "offset {offset} before the frame");
                    for _ in 0..match_len {
                        out.push(out[out.len() - offset]);
                    }
                }
            });
            assert_eq!(out.len(), block_end, "a block's sequences cover it exactly");
        }
        assert!(out == input, "replay differs");
    }

    #[test]
    fn sequences_stay_in_the_window_and_the_frame_across_reused_frames() {
        let mut m = FastMatcher::new();
        // The same content twice in a row: the second frame must not match into the first.
        for (name, input) in inputs().into_iter().chain(inputs()) {
            for hint in [true, false] {
                replay(&mut m, &input, hint);
                let _ = &name;
            }
        }
    }

    #[test]
    fn positions_restart_cleanly_when_the_counter_runs_out() {
        let mut m = FastMatcher::new();
        m.pos_limit = 5 * BLOCK as u32 + 1000;
        let mut restarts = 0;
        let mut last_base = 0;
        for i in 0..40u64 {
            let input = matchy(1000 + (i as usize * 37_000) % (3 * BLOCK), i);
            replay(&mut m, &input, i % 2 == 0);
            if m.cur_base < last_base {
                restarts += 1;
            }
            last_base = m.cur_base;
            // And through the real encoder with the same matcher.
            let (packed, back) = compress_with(m, &input, i % 3 == 0);
            m = back;
            assert_eq!(ruzstd_decode(&packed), input);
        }
        assert!(restarts >= 3, "{restarts} restarts");
    }

    fn seq(lit_start: u32, lit_end: u32, match_len: u32) -> Seq {
        Seq {
            lit_start,
            lit_end,
            offset: 1,
            match_len,
        }
    }

    #[test]
    fn blocks_ruzstd_cannot_entropy_code_are_recognised() {
        let mut block = vec![b'a'; 3000];
        block[2000..].fill(b'b');
        // Every match without literals: ruzstd's FSE builder would panic.
        assert!(!encodable(&block, &[seq(0, 0, 5), seq(5, 5, 9)]));
        assert!(encodable(&block, &[seq(0, 1, 5), seq(6, 6, 9)]));
        // Over 1,024 literals of one value: ruzstd's Huffman builder would panic.
        assert!(!encodable(&block, &[seq(0, 1100, 0)]));
        assert!(!encodable(&block, &[seq(0, 600, 5), seq(605, 1200, 0)]));
        assert!(encodable(&block, &[seq(0, 1024, 0)]));
        assert!(encodable(&block, &[seq(0, 600, 5), seq(1900, 2500, 0)]));
        assert!(encodable(&block, &[]));
        // What the fallback sends instead (the whole block as literals) encodes.
        let mut m = FastMatcher::new();
        m.commit_space(block.clone());
        m.seqs = vec![seq(0, 600, 5), seq(605, 1200, 0)];
        let mut handed = Vec::new();
        m.emit(|s| handed.push(format!("{s:?}")));
        assert_eq!(
            handed,
            [format!("{:?}", Sequence::Literals { literals: &block })]
        );
        let (packed, _) = compress_with(FastMatcher::new(), &block, true);
        assert_eq!(ruzstd_decode(&packed), block);
    }

    #[test]
    fn window_is_sized_to_the_input() {
        let mut m = FastMatcher::new();
        m.expect_input(10);
        assert_eq!(m.window_size(), 1024);
        m.expect_input(5000);
        assert_eq!(m.window_size(), 8192);
        m.expect_input(10 << 20);
        assert_eq!(m.window_size(), MAX_WINDOW as u64);
    }

    /// libzstd (level 1's reference decoder) reads what this matcher writes, as do librdkafka
    /// and the Java client's zstd-jni. Needs the C library, so only with `zstd-c`.
    #[cfg(feature = "zstd-c")]
    #[test]
    fn libzstd_decodes_the_frames() {
        for (name, input) in inputs() {
            let mut packed = bytes::BytesMut::new();
            compress_frame(&input, &mut packed);
            let back = zstd::stream::decode_all(&packed[..]).unwrap();
            assert!(back == input, "{name}");
            let (packed, _) = compress_with(FastMatcher::new(), &input, false);
            let back = zstd::stream::decode_all(&packed[..]).unwrap();
            assert!(back == input, "{name} without a hint");
        }
    }
}
