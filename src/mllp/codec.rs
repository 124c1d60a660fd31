//! MLLP framing: `0x0B <message> 0x1C 0x0D`, as a tokio-util codec.
//!
//! The decoder is lenient where senders in the wild are sloppy and strict
//! where leniency would hide data loss:
//! - CR/LF (and other ASCII whitespace) between frames is skipped;
//! - a frame is complete at its `0x1C`: one whose `0x0D` is missing, or
//!   arrives later, is accepted at once (the following byte is left for the
//!   next frame; a late `0x0D` is white space between frames);
//! - any other byte outside a frame is an error ([`MllpError::Garbage`]);
//! - a frame longer than `max_message_bytes` is an error
//!   ([`MllpError::TooLarge`]), detected without buffering more than the limit.
//!
//! Errors are terminal for the connection: the caller closes it. Each error
//! carries (a bounded prefix of) the offending bytes so they can be kept.
//! It does not interpret the payload: that is [`crate::hl7`]'s job.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const VT: u8 = 0x0B;
/// End block.
pub const FS: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const CR: u8 = 0x0D;

/// How many offending bytes an error keeps for inspection.
pub const KEPT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{} byte(s) outside an MLLP frame (expected 0x0B start block)", bytes.len())]
    Garbage { bytes: Bytes },
    #[error("frame exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize, bytes: Bytes },
    #[error("connection closed inside a frame after {} byte(s)", bytes.len())]
    Truncated { bytes: Bytes },
}

impl MllpError {
    /// The offending bytes (bounded by [`KEPT_BYTES`]), if any.
    pub fn kept_bytes(&self) -> Option<&Bytes> {
        match self {
            MllpError::Io(_) => None,
            MllpError::Garbage { bytes }
            | MllpError::TooLarge { bytes, .. }
            | MllpError::Truncated { bytes } => Some(bytes),
        }
    }
}

/// The MLLP codec. Decodes to the message bytes between the block markers;
/// encodes message bytes into a frame.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_message_bytes: usize,
    /// How far into the current frame's payload we have already scanned for FS.
    scanned: usize,
}

impl MllpCodec {
    pub fn new(max_message_bytes: usize) -> Self {
        MllpCodec {
            max_message_bytes,
            scanned: 0,
        }
    }

    fn keep(buf: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&buf[..buf.len().min(KEPT_BYTES)])
    }
}

impl Default for MllpCodec {
    fn default() -> Self {
        MllpCodec::new(1024 * 1024)
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        // Skip whitespace between frames.
        if self.scanned == 0 {
            let skip = src.iter().take_while(|b| b.is_ascii_whitespace()).count();
            src.advance(skip);
            if src.is_empty() {
                return Ok(None);
            }
            if src[0] != VT {
                let end = src.iter().position(|&b| b == VT).unwrap_or(src.len());
                let bytes = Self::keep(&src[..end]);
                src.clear();
                return Err(MllpError::Garbage { bytes });
            }
        }
        // src[0] is VT; look for FS after what we have scanned already.
        let payload = &src[1..];
        let from = self.scanned.min(payload.len());
        match payload[from..].iter().position(|&b| b == FS) {
            Some(rel) => {
                let end = from + rel;
                if end > self.max_message_bytes {
                    let bytes = Self::keep(&src[..]);
                    src.clear();
                    self.scanned = 0;
                    return Err(MllpError::TooLarge {
                        limit: self.max_message_bytes,
                        bytes,
                    });
                }
                // The frame is complete at FS: a sender that leaves out the CR
                // and waits for its ACK must not wait for our idle timeout. The
                // CR, when it is here, is taken with the frame; when it comes
                // later it is white space between frames, skipped.
                let after = 1 + end + 1;
                let trailer = usize::from(src.get(after) == Some(&CR));
                let mut frame = src.split_to(after + trailer);
                frame.advance(1);
                frame.truncate(end);
                self.scanned = 0;
                Ok(Some(frame.freeze()))
            }
            None => {
                if payload.len() > self.max_message_bytes {
                    let bytes = Self::keep(&src[..]);
                    src.clear();
                    self.scanned = 0;
                    return Err(MllpError::TooLarge {
                        limit: self.max_message_bytes,
                        bytes,
                    });
                }
                self.scanned = payload.len();
                src.reserve(4096);
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let bytes = Self::keep(&src[..]);
        src.clear();
        self.scanned = 0;
        Err(MllpError::Truncated { bytes })
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let item = item.as_ref();
        dst.reserve(item.len() + 3);
        dst.put_u8(VT);
        dst.put_slice(item);
        dst.put_u8(FS);
        dst.put_u8(CR);
        Ok(())
    }
}

/// Frames one message into a new buffer.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(VT);
    out.extend_from_slice(message);
    out.push(FS);
    out.push(CR);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]], max: usize) -> (Vec<Bytes>, Option<String>) {
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[test]
    fn decodes_frames_and_skips_whitespace() {
        let stream = b"\x0bMSH|a\x1c\x0d\r\n\x0bMSH|b\x1c\x0d";
        let (frames, err) = decode_all(&[stream], 100);
        assert_eq!(frames, vec![Bytes::from("MSH|a"), Bytes::from("MSH|b")]);
        assert!(err.is_none());
    }

    #[test]
    fn accepts_missing_cr_after_fs() {
        let (frames, err) = decode_all(&[b"\x0bA\x1c\x0bB\x1c"], 100);
        assert_eq!(frames, vec![Bytes::from("A"), Bytes::from("B")]);
        assert!(err.is_none());
    }

    #[test]
    fn a_frame_is_complete_at_fs_without_waiting_for_the_cr() {
        let mut codec = MllpCodec::new(100);
        let mut buf = BytesMut::from(&b"\x0bMSH|a\x1c"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Bytes::from("MSH|a")));
        // the CR, arriving after, is skipped as white space before the next frame
        buf.extend_from_slice(b"\r\x0bMSH|b\x1c\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Bytes::from("MSH|b")));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error_with_bytes() {
        let mut codec = MllpCodec::new(100);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        match codec.decode(&mut buf) {
            Err(MllpError::Garbage { bytes }) => assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n"),
            other => panic!("expected garbage, got {other:?}"),
        }
    }

    #[test]
    fn too_large_detected_before_end() {
        let mut codec = MllpCodec::new(10);
        let mut buf = BytesMut::from(&b"\x0b0123456789ABC"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(MllpError::TooLarge { limit: 10, .. })
        ));
    }

    #[test]
    fn exactly_at_limit_is_accepted() {
        let (frames, err) = decode_all(&[b"\x0b0123456789\x1c\x0d"], 10);
        assert_eq!(frames, vec![Bytes::from("0123456789")]);
        assert!(err.is_none());
    }

    #[test]
    fn truncated_at_eof() {
        let (frames, err) = decode_all(&[b"\x0bMSH|half"], 100);
        assert!(frames.is_empty());
        assert!(err.unwrap().contains("inside a frame"));
    }

    proptest! {
        #[test]
        fn splitting_anywhere_yields_same_frames(
            msgs in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no FS", |b| *b != FS), 0..200), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for m in &msgs { stream.extend(frame(m)); }
            let whole = decode_all(&[&stream], 1000);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points { chunks.push(&stream[last..p]); last = p; }
            chunks.push(&stream[last..]);
            let split = decode_all(&chunks, 1000);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole.0.len(), msgs.len());
            for (f, m) in whole.0.iter().zip(&msgs) { prop_assert_eq!(&f[..], &m[..]); }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), max in 1usize..500) {
            let _ = decode_all(&[&data], max);
        }
    }
}
