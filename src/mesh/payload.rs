//! Payload handling: split a document into chunks, gzip each, gunzip on the way in,
//! and the content checksum we put in `mex-Content-Checksum`.
//!
//! Pure: no I/O. MESH's rule is to split the *uncompressed* data and compress every
//! chunk independently with the same algorithm; the receiver gunzips each chunk and
//! concatenates them.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// Prefix of the checksum value we send: `sha256:` and 64 lowercase hex digits of the
/// whole uncompressed document. MESH carries it opaquely (it allows letters, digits
/// and `:-/`); on download a value with this prefix is verified.
pub const CHECKSUM_PREFIX: &str = "sha256:";

/// The `mex-Content-Checksum` value for a whole uncompressed document.
pub fn checksum(document: &[u8]) -> String {
    format!("{CHECKSUM_PREFIX}{}", hex::encode(Sha256::digest(document)))
}

/// Splits `body` into ordered pieces of at most `chunk_size` bytes (at least one
/// piece, empty if the body is empty). `chunk_size` 0 is treated as 1.
pub fn split(body: &Bytes, chunk_size: usize) -> Vec<Bytes> {
    let chunk_size = chunk_size.max(1);
    if body.is_empty() {
        return vec![Bytes::new()];
    }
    (0..body.len())
        .step_by(chunk_size)
        .map(|start| body.slice(start..(start + chunk_size).min(body.len())))
        .collect()
}

/// gzip-compresses one chunk.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        Compression::default(),
    );
    encoder.write_all(data)?;
    encoder.finish()
}

/// Decompresses one gzip chunk (multi-member streams are read to the end).
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    gunzip_at_most(data, usize::MAX).map(|(out, _)| out)
}

/// [`gunzip`], reading at most `limit` bytes of output: the bytes, and
/// whether there was more (a gzip of a few hundred KB can hold gigabytes).
pub fn gunzip_at_most(data: &[u8], limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit.saturating_add(1)));
    let decoder = MultiGzDecoder::new(data);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder.take(cap).read_to_end(&mut out)?;
    let more = out.len() > limit;
    out.truncate(limit);
    Ok((out, more))
}

/// Parses `mex-Chunk-Range: n:total` into `(n, total)`; `None` if malformed.
pub fn parse_chunk_range(value: &str) -> Option<(u32, u32)> {
    let (n, total) = value.trim().split_once(':')?;
    let n: u32 = n.trim().parse().ok()?;
    let total: u32 = total.trim().parse().ok()?;
    (n >= 1 && n <= total).then_some((n, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(len: usize, chunk: usize, expected: &[usize]) {
        let body = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let pieces = split(&body, chunk);
        let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(sizes, expected, "len {len} chunk {chunk}");
        assert_eq!(pieces.concat(), body.to_vec());
    }

    #[test]
    fn split_sizes() {
        check_split(0, 5, &[0]);
        check_split(4, 5, &[4]);
        check_split(5, 5, &[5]);
        check_split(6, 5, &[5, 1]);
        check_split(20, 5, &[5, 5, 5, 5]);
        check_split(3, 0, &[1, 1, 1]);
    }

    #[test]
    fn gunzip_stops_at_its_limit() {
        let big = vec![b'x'; 1_000_000];
        let zipped = gzip(&big).unwrap();
        assert!(zipped.len() < 10_000);
        let (out, more) = gunzip_at_most(&zipped, 1000).unwrap();
        assert_eq!((out.len(), more), (1000, true));
        let (out, more) = gunzip_at_most(&zipped, 1_000_000).unwrap();
        assert_eq!((out.len(), more), (1_000_000, false));
    }

    #[test]
    fn gzip_round_trip_and_chunks_gunzip_independently() {
        let body = Bytes::from("MSH|^~\\&|PAS|RX1|…\r".repeat(1000));
        let pieces = split(&body, 777);
        let mut joined = Vec::new();
        for piece in &pieces {
            let compressed = gzip(piece).unwrap();
            assert_eq!(&compressed[..2], &[0x1f, 0x8b]);
            joined.extend(gunzip(&compressed).unwrap());
        }
        assert_eq!(joined, body.to_vec());
        assert!(gunzip(b"not gzip").is_err());
    }

    #[test]
    fn checksum_is_sha256_hex_with_prefix() {
        assert_eq!(
            checksum(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn chunk_range_parsing() {
        assert_eq!(parse_chunk_range("1:1"), Some((1, 1)));
        assert_eq!(parse_chunk_range(" 2:4 "), Some((2, 4)));
        assert_eq!(parse_chunk_range("0:4"), None);
        assert_eq!(parse_chunk_range("5:4"), None);
        assert_eq!(parse_chunk_range("x:4"), None);
        assert_eq!(parse_chunk_range(""), None);
    }
}
