//! Choosing a partition: murmur2 for keyed records, exactly as the Java client and
//! librdkafka's `murmur2_random`, and a sticky choice for records without a key.
//!
//! A key lands on `(murmur2(key) & 0x7fffffff) % partitions` whichever client wrote it, so
//! purekafka, Java and librdkafka producers agree on where a key's records live.

use crate::record::Record;

/// Java's `org.apache.kafka.common.utils.Utils.murmur2`: 32-bit MurmurHash2 with seed
/// `0x9747b28c`, bytes read little-endian, the tail handled byte by byte.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from case 3 to case 1.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Java's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(h: i32) -> i32 {
    h & 0x7fff_ffff
}

/// The partition the Java client and librdkafka (`murmur2_random`) choose for `key` among
/// `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    to_positive(murmur2(key)) % partitions
}

/// Chooses partitions for records that have no explicit partition.
///
/// Return `Some(p)` (with `0 <= p < partitions`) to place the record, or `None` to let the
/// producer's sticky partitioner place it (fill one partition's batch, then move on), which
/// is what the default does for records without a key.
///
/// ```
/// use purekafka::producer::Partitioner;
/// use purekafka::Record;
///
/// /// Sends everything whose key starts with "vip-" to partition 0.
/// struct Vip;
/// impl Partitioner for Vip {
///     fn partition(&self, record: &Record, partitions: i32) -> Option<i32> {
///         match record.key.as_deref() {
///             Some(k) if k.starts_with(b"vip-") => Some(0),
///             Some(k) => Some(purekafka::producer::partition_for_key(k, partitions)),
///             None => None,
///         }
///     }
/// }
/// ```
pub trait Partitioner: Send + Sync + 'static {
    /// The partition of `record` among `partitions` partitions, or `None` for sticky.
    fn partition(&self, record: &Record, partitions: i32) -> Option<i32>;
}

/// The default partitioner: murmur2 of the key as the Java client and librdkafka's
/// `murmur2_random`; records without a key are left to the sticky partitioner.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPartitioner;

impl Partitioner for DefaultPartitioner {
    #[inline]
    fn partition(&self, record: &Record, partitions: i32) -> Option<i32> {
        record
            .key
            .as_deref()
            .map(|k| partition_for_key(k, partitions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn java_murmur2_test_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit() {
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn empty_key_is_hashed_too() {
        // Java hashes an empty key like any other (only a null key is keyless).
        let p = partition_for_key(b"", 6);
        assert!((0..6).contains(&p));
    }
}
