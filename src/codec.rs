//! Record batch compression and decompression, one place for the producer
//! (`producer/batch.rs`) and the consumer (`consumer/decode.rs`). All pure Rust:
//!
//! | codec id | codec | crate | format written |
//! |---|---|---|---|
//! | 1 | gzip | `flate2` (miniz_oxide backend) | a gzip stream, default level |
//! | 2 | snappy | `snap` | xerial framing (header, 32 KiB blocks) as the Java client writes; raw snappy is read too |
//! | 3 | lz4 | `lz4_flex` | an LZ4 *frame* (Kafka ≥ 0.10 / magic 2 uses the frame format) |
//! | 4 | zstd | `ruzstd` + [`zstd_matcher`] | one standard zstd frame (≈ zstd level 1) |
//!
//! zstd has no level setting here. ruzstd writes the frame and does the entropy stage
//! (Huffman literals, FSE sequences) at its only level, "fastest"; the matches come from our
//! own match finder, [`zstd_matcher::FastMatcher`] (zstd's "fast" strategy: one hash-table
//! probe per position), plugged in through ruzstd's `Matcher` trait and kept per thread.
//! ruzstd's built-in matcher was the bottleneck (68 % of the producer's CPU with zstd);
//! ours compresses 1.5-1.9x faster on JSON events and about 5x faster on batches of repeated
//! records, with output no larger (`cargo bench --bench codecs`; figures in the README). Every
//! reader decodes the frames (tests: ruzstd, libzstd with `zstd-c`, librdkafka in
//! tests/codecs.rs); they are larger than libzstd's level 1 writes.
//!
//! Decompression output is capped at [`MAX_DECOMPRESSED`]: a batch that inflates beyond it is
//! an error, never an allocation sized by the peer.
//!
//! The opt-in feature `zstd-c` switches zstd to libzstd (the `zstd` crate, level 1; a C
//! compiler is needed): still faster than ruzstd with our matcher, and about 20 % smaller
//! (figures in the README). There is no C lz4 feature: the C lz4 library measured slower than `lz4_flex`.
//!
//! The functions are public so that benchmarks (`benches/codecs.rs`) and tools can use the
//! exact code the client runs; applications do not need them.

#[cfg(feature = "zstd")]
pub mod zstd_matcher;

use crate::config::Compression;
use crate::error::{Error, Result};

/// Largest decompressed record section accepted (a hostile batch cannot make us allocate
/// more than this).
pub const MAX_DECOMPRESSED: usize = 256 << 20;

/// The xerial snappy-java stream header (magic, version 1, compatible version 1) that the
/// Java client writes before snappy blocks.
const XERIAL_SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's block size.
const XERIAL_BLOCK_SIZE: usize = 32 * 1024;

/// The codec id a batch's attributes carry for `compression`.
pub fn codec_id(compression: Compression) -> i16 {
    match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        #[cfg(feature = "lz4")]
        Compression::Lz4 => 3,
        #[cfg(feature = "zstd")]
        Compression::Zstd => 4,
    }
}

fn name(codec: i16) -> &'static str {
    match codec {
        0 => "none",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown codec",
    }
}

/// Compresses a batch's record section as Kafka expects for `compression`.
pub fn compress(compression: Compression, input: &[u8]) -> Result<Vec<u8>> {
    let mut out = bytes::BytesMut::new();
    compress_into(compression, input, &mut out)?;
    Ok(Vec::from(out))
}

/// Like [`compress`], appending to `out` (the producer compresses straight behind a batch's
/// header this way, without a second buffer and copy).
pub fn compress_into(
    compression: Compression,
    input: &[u8],
    out: &mut bytes::BytesMut,
) -> Result<()> {
    use bytes::BufMut;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Protocol(format!("{what} compression of a record batch failed: {e}"))
    };
    match compression {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            use std::io::Write;
            let mut enc =
                flate2::write::GzEncoder::new((&mut *out).writer(), flate2::Compression::default());
            enc.write_all(input).map_err(|e| failed("gzip", &e))?;
            enc.finish().map_err(|e| failed("gzip", &e))?;
        }
        Compression::Snappy => {
            // Each block is compressed into a per-thread scratch buffer that is zeroed once
            // and reused, then only its compressed bytes are copied out: zero-filling a fresh
            // `max_compress_len` region per block cost more than the encoder itself.
            thread_local! {
                static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            out.extend_from_slice(XERIAL_SNAPPY_HEADER);
            let mut encoder = snap::raw::Encoder::new();
            SCRATCH.with(|scratch| -> Result<()> {
                let mut scratch = scratch.borrow_mut();
                for block in input.chunks(XERIAL_BLOCK_SIZE) {
                    let need = snap::raw::max_compress_len(block.len());
                    if scratch.len() < need {
                        scratch.resize(need, 0);
                    }
                    let n = encoder
                        .compress(block, &mut scratch[..need])
                        .map_err(|e| failed("snappy", &e))?;
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                    out.extend_from_slice(&scratch[..n]);
                }
                Ok(())
            })?;
        }
        #[cfg(feature = "lz4")]
        Compression::Lz4 => {
            use std::io::Write;
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .content_checksum(false);
            let mut enc =
                lz4_flex::frame::FrameEncoder::with_frame_info(info, (&mut *out).writer());
            enc.write_all(input).map_err(|e| failed("lz4", &e))?;
            enc.finish().map_err(|e| failed("lz4", &e))?;
        }
        #[cfg(all(feature = "zstd", feature = "zstd-c"))]
        Compression::Zstd => {
            let packed = zstd::stream::encode_all(input, 1).map_err(|e| failed("zstd", &e))?;
            out.extend_from_slice(&packed);
        }
        #[cfg(all(feature = "zstd", not(feature = "zstd-c")))]
        Compression::Zstd => {
            zstd_matcher::compress_frame(input, out);
        }
    }
    Ok(())
}

/// Decompresses a batch's record section by codec id (the low three attribute bits). Codec 0
/// borrows the input; an unknown codec, one this build lacks, corrupt input or output beyond
/// [`MAX_DECOMPRESSED`] is an [`Error::Protocol`] naming the codec.
pub fn decompress(codec: i16, input: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    decompress_limited(codec, input, MAX_DECOMPRESSED)
}

fn decompress_limited(
    codec: i16,
    input: &[u8],
    limit: usize,
) -> Result<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let what = name(codec);
    let failed = |e: &dyn std::fmt::Display| {
        Error::Protocol(format!(
            "{what} decompression of a record batch failed: {e}"
        ))
    };
    match codec {
        0 => Ok(Cow::Borrowed(input)),
        1 => read_limited(flate2::read::GzDecoder::new(input), limit)
            .map(Cow::Owned)
            .map_err(|e| failed(&e)),
        2 => {
            let mut decoder = snap::raw::Decoder::new();
            let Some(mut framed) = input.strip_prefix(&XERIAL_SNAPPY_HEADER[..]) else {
                let len = snap::raw::decompress_len(input).map_err(|e| failed(&e))?;
                if len > limit {
                    return Err(failed(&format!("inflates beyond {limit} bytes")));
                }
                return decoder
                    .decompress_vec(input)
                    .map(Cow::Owned)
                    .map_err(|e| failed(&e));
            };
            let mut out = Vec::new();
            while !framed.is_empty() {
                if framed.len() < 4 {
                    return Err(failed(&"truncated block length"));
                }
                let len = u32::from_be_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
                let block = framed
                    .get(4..4usize.saturating_add(len))
                    .ok_or_else(|| failed(&"truncated block"))?;
                let block_len = snap::raw::decompress_len(block).map_err(|e| failed(&e))?;
                if out.len().saturating_add(block_len) > limit {
                    return Err(failed(&format!("inflates beyond {limit} bytes")));
                }
                let at = out.len();
                out.resize(at + block_len, 0);
                let n = decoder
                    .decompress(block, &mut out[at..])
                    .map_err(|e| failed(&e))?;
                out.truncate(at + n);
                framed = &framed[4 + len..];
            }
            Ok(Cow::Owned(out))
        }
        #[cfg(feature = "lz4")]
        3 => read_limited(lz4_flex::frame::FrameDecoder::new(input), limit)
            .map(Cow::Owned)
            .map_err(|e| failed(&e)),
        #[cfg(all(feature = "zstd", feature = "zstd-c"))]
        4 => zstd::stream::read::Decoder::new(input)
            .and_then(|d| read_limited(d, limit))
            .map(Cow::Owned)
            .map_err(|e| failed(&e)),
        #[cfg(all(feature = "zstd", not(feature = "zstd-c")))]
        4 => {
            // A batch may hold several concatenated frames; decode until the input is used up.
            let mut rest = input;
            let mut out = Vec::new();
            while !rest.is_empty() {
                let decoder =
                    ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| failed(&e))?;
                let frame = read_limited(decoder, limit - out.len()).map_err(|e| failed(&e))?;
                out.extend_from_slice(&frame);
            }
            Ok(Cow::Owned(out))
        }
        other => Err(Error::Protocol(format!(
            "record batch compressed with codec {other} ({what}), which this build cannot \
             decompress{}",
            if matches!(other, 3 | 4) {
                " (enable purekafka's `lz4` / `zstd` features, on by default)"
            } else {
                ""
            }
        ))),
    }
}

/// Reads `reader` to its end, failing once more than `limit` bytes come out.
fn read_limited(reader: impl std::io::Read, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("inflates beyond {limit} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Compression> {
        vec![
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            #[cfg(feature = "lz4")]
            Compression::Lz4,
            #[cfg(feature = "zstd")]
            Compression::Zstd,
        ]
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter rendered as text, with some noise.
        let mut out = Vec::with_capacity(len);
        let mut x: u32 = 12345;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(format!("record-{} ", x % 1000).as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn every_codec_round_trips_small_empty_and_multi_block_input() {
        for c in all() {
            for len in [0, 1, 100, 70_000, 300_000] {
                let input = sample(len);
                let packed = compress(c, &input).unwrap();
                let back = decompress(codec_id(c), &packed).unwrap();
                assert_eq!(&back[..], &input[..], "{c:?} len {len}");
                if len >= 70_000 && c != Compression::None {
                    assert!(packed.len() < input.len() / 2, "{c:?} compresses");
                }
            }
        }
    }

    #[test]
    fn output_beyond_the_limit_is_an_error_not_an_allocation() {
        let input = vec![0u8; 1 << 20];
        for c in all() {
            if c == Compression::None {
                continue;
            }
            let packed = compress(c, &input).unwrap();
            let e = decompress_limited(codec_id(c), &packed, 1000).unwrap_err();
            assert!(e.to_string().contains("beyond 1000 bytes"), "{c:?}: {e}");
        }
    }

    #[test]
    fn corrupt_input_is_an_error_naming_the_codec() {
        for (id, name) in [(1, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")] {
            let e = decompress(
                id,
                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\xff\xffgarbage",
            )
            .unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = decompress(7, b"x").unwrap_err();
        assert!(e.to_string().contains("codec 7"), "{e}");
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_reads_concatenated_frames() {
        let mut packed = compress(Compression::Zstd, b"first ").unwrap();
        packed.extend(compress(Compression::Zstd, b"second").unwrap());
        assert_eq!(&decompress(4, &packed).unwrap()[..], b"first second");
    }
}
