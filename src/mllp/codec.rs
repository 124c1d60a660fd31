//! MLLP framing: `0x0B <message> 0x1C 0x0D`, as a tokio-util codec.
//!
//! The decoder is lenient where senders in the wild are sloppy and strict
//! where leniency would hide data loss:
//! - CR/LF (and other ASCII whitespace), NUL keep-alive bytes and a UTF-8 byte
//!   order mark before a start block are skipped between frames;
//! - a frame ends at a `0x1C` followed by `0x0D`, by a line feed or by a new
//!   `0x0B` and a message header (a sender that leaves out the CR; `1C 0B`
//!   with no header after it is data: U+0B1C in UTF-16LE). A `0x1C` that is the last
//!   byte received so far, right after a segment's end (CR or LF: where a
//!   message ends), ends the frame only when nothing follows it soon (one inside
//!   a segment waits for the byte after it, however long):
//!   [`MllpCodec::awaiting_end`] says so, and the listener calls
//!   [`MllpCodec::end_at_fs`] after a short grace;
//! - a `0x1C` followed by any other byte is not an end: it is part of the
//!   message, which `hl7::assess` then rejects (0x1C is no HL7 data), so a
//!   stray byte can never cut a message short and have the part before it
//!   acknowledged;
//! - a `0x0B` inside an unfinished frame followed by `MSH`, `FHS` or `BHS`
//!   (in UTF-8, or in UTF-16 after its byte order mark) starts a new frame: the sender gave up on the one before (after its own
//!   write timeout, say). The abandoned bytes are handed out by
//!   [`MllpCodec::take_abandoned`] to be kept, and the new frame is read and
//!   answered as usual. Followed by anything else, it is data (a word
//!   processor's manual line break pasted into a report);
//! - bytes outside a frame before a start block and a message header
//!   (`MSH`, `FHS`, `BHS`), in the same read or an earlier one, are handed
//!   out by [`MllpCodec::take_stray`] to be kept, and the frame after them is
//!   read; up to [`MAX_STRAY_BYTES`] of them are held while the start block
//!   has not come; an end block written twice between frames is skipped
//!   like white space;
//! - bytes outside a frame that are not MLLP (a message without framing, an
//!   HTTP request, a TLS handshake), and more stray bytes than that with no
//!   frame after them, are an error ([`MllpError::Garbage`]): the peer is told
//!   at once by the connection closing;
//! - a frame longer than `max_message_bytes` is an error
//!   ([`MllpError::TooLarge`]), detected without buffering more than the limit.
//!
//! Errors are terminal for the connection: the caller closes it. Each error
//! carries (a bounded prefix of) the offending bytes so they can be kept.
//! It does not interpret the payload: that is [`crate::hl7`]'s job.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// Start block.
pub const VT: u8 = 0x0B;
/// End block.
pub const FS: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const CR: u8 = 0x0D;
/// A line feed some senders put after the end block instead of the CR.
const LF: u8 = 0x0A;

/// How many offending bytes an error keeps for inspection.
pub const KEPT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{} byte(s) outside an MLLP frame (expected 0x0B start block)", bytes.len())]
    Garbage { bytes: Bytes },
    /// `received`: the bytes of the frame read when it went over the limit
    /// (more than `limit`; the rest of it is not read).
    #[error("frame exceeds the limit of {limit} bytes ({received} read before it was cut off)")]
    TooLarge {
        limit: usize,
        received: usize,
        bytes: Bytes,
    },
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

    /// How many offending bytes arrived: all of them, not only those kept
    /// (a frame over the limit: as many as were read of it).
    pub fn received_bytes(&self) -> usize {
        match self {
            MllpError::TooLarge { received, .. } => *received,
            other => other.kept_bytes().map_or(0, Bytes::len),
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
    /// The last byte received is the current frame's FS (at `scanned`): the
    /// frame ends there unless a data byte follows.
    fs_last: bool,
    /// And the byte before that FS ends a segment (CR or LF): only then may
    /// the caller end the frame there with no CR after a grace
    /// ([`Self::awaiting_end`]); at the end of the stream it ends anyway.
    fs_after_segment: bool,
    /// Frames a new start block cut short, oldest first (bounded prefixes).
    abandoned: Vec<Bytes>,
    /// Bytes outside any frame that came before a start block in the same
    /// read (bounded prefixes).
    stray: Vec<Bytes>,
}

impl MllpCodec {
    pub fn new(max_message_bytes: usize) -> Self {
        MllpCodec {
            max_message_bytes,
            scanned: 0,
            fs_last: false,
            fs_after_segment: false,
            abandoned: Vec::new(),
            stray: Vec::new(),
        }
    }

    fn keep(buf: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&buf[..buf.len().min(KEPT_BYTES)])
    }

    /// Whether the frame's FS is the last byte received: the caller may end
    /// the frame there ([`Self::end_at_fs`]) when nothing follows soon.
    pub fn awaiting_end(&self) -> bool {
        self.fs_last && self.fs_after_segment
    }

    /// Ends the current frame at the FS that is the last byte of `src`
    /// (nothing followed it: the sender left out the CR). `None` when
    /// [`Self::awaiting_end`] does not hold.
    pub fn end_at_fs(&mut self, src: &mut BytesMut) -> Option<Bytes> {
        let end = self.scanned;
        if !self.fs_last || src.len() != end + 2 || src[end + 1] != FS {
            return None;
        }
        let mut frame = src.split_to(end + 2);
        frame.advance(1);
        frame.truncate(end);
        self.scanned = 0;
        self.fs_last = false;
        Some(frame.freeze())
    }

    /// The bytes of frames a new start block cut short since the last call
    /// (each with its `0x0B`), to be kept for inspection.
    pub fn take_abandoned(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.abandoned)
    }

    /// The bytes outside any frame that came before a start block since the
    /// last call, to be kept for inspection (the frame after them is read).
    pub fn take_stray(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.stray)
    }

    fn too_large(&mut self, src: &mut BytesMut) -> MllpError {
        let bytes = Self::keep(&src[..]);
        let received = src.len();
        src.clear();
        self.scanned = 0;
        self.fs_last = false;
        MllpError::TooLarge {
            limit: self.max_message_bytes,
            received,
            bytes,
        }
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
            // white space, NULs (keep-alive bytes some senders write between
            // frames), an end block written twice, and a UTF-8 byte order
            // mark before a start block
            loop {
                let skip = src
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace() || **b == 0 || **b == FS)
                    .count();
                src.advance(skip);
                if src.starts_with(b"\xEF\xBB\xBF\x0B") {
                    src.advance(3);
                }
                if skip == 0 {
                    break;
                }
            }
            if src.is_empty() {
                return Ok(None);
            }
            if src[0] != VT {
                match stray_before_frame(src) {
                    // bytes before a start block, and a message after it:
                    // kept, and the frame read (a sender's stack that writes
                    // something before each frame, in the same write or its
                    // own, is not cut off)
                    Stray::Frame(end) => {
                        self.stray.push(Self::keep(&src[..end]));
                        src.advance(end);
                    }
                    // no frame yet: the start block may come in a later read
                    Stray::Wait => return Ok(None),
                    // not MLLP at all (an unframed message, an HTTP or TLS
                    // client), or more than a stray prefix: an error
                    Stray::Garbage => {
                        let bytes = Self::keep(&src[..]);
                        src.clear();
                        return Err(MllpError::Garbage { bytes });
                    }
                }
            }
        }
        self.fs_last = false;
        loop {
            // src[0] is VT; look for FS (or a new VT) after what we have scanned.
            let payload = &src[1..];
            let from = self.scanned.min(payload.len());
            let Some(rel) = payload[from..].iter().position(|&b| b == FS || b == VT) else {
                if payload.len() > self.max_message_bytes {
                    return Err(self.too_large(src));
                }
                self.scanned = payload.len();
                src.reserve(4096);
                return Ok(None);
            };
            let end = from + rel;
            if end > self.max_message_bytes {
                return Err(self.too_large(src));
            }
            if payload[end] == VT {
                match starts_a_frame(&payload[end + 1..]) {
                    // not known yet: wait for the bytes that tell
                    None => {
                        self.scanned = end;
                        src.reserve(4096);
                        return Ok(None);
                    }
                    // A new frame starts inside this one: the sender abandoned it.
                    Some(true) => {
                        let abandoned = src.split_to(1 + end);
                        self.abandoned.push(Self::keep(&abandoned));
                        self.scanned = 0;
                        continue;
                    }
                    // a 0x0B in the data (a word processor's manual line
                    // break pasted into a report): part of the message
                    Some(false) => {
                        self.scanned = end + 1;
                        continue;
                    }
                }
            }
            match payload.get(end + 1) {
                // nothing after the FS yet: the CR, or a data byte, may follow.
                // Only after a segment's end may it end the frame with no CR
                // after a grace (a sender that leaves the CR out); inside a
                // segment it waits for the byte after it, however long: a
                // stray 0x1C at a pause in the sender's writes must not cut the
                // message short and have the part before it acknowledged
                None => {
                    self.scanned = end;
                    self.fs_last = true;
                    self.fs_after_segment = end > 0 && matches!(payload[end - 1], CR | LF);
                    return Ok(None);
                }
                // FS inside the message: not an end (the message is refused later)
                Some(&b) if b != CR && b != LF && b != VT => {
                    self.scanned = end + 1;
                    continue;
                }
                // FS then a start block (a sender that leaves out the CR):
                // an end only when a message header follows it (in UTF-16,
                // `1C 0B` is U+0B1C, a character of the text)
                Some(&VT) => match starts_a_frame(&payload[end + 2..]) {
                    None => {
                        self.scanned = end;
                        src.reserve(4096);
                        return Ok(None);
                    }
                    Some(false) => {
                        self.scanned = end + 1;
                        continue;
                    }
                    Some(true) => {
                        let mut frame = src.split_to(1 + end + 1);
                        frame.advance(1);
                        frame.truncate(end);
                        self.scanned = 0;
                        return Ok(Some(frame.freeze()));
                    }
                },
                Some(&b) => {
                    // the CR is taken with the frame; an LF or a new VT stays
                    // for the next one
                    let trailer = usize::from(b == CR);
                    let mut frame = src.split_to(1 + end + 1 + trailer);
                    frame.advance(1);
                    frame.truncate(end);
                    self.scanned = 0;
                    return Ok(Some(frame.freeze()));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        // the peer closed right after an FS: the frame ends there
        if let Some(frame) = self.end_at_fs(src) {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let bytes = Self::keep(&src[..]);
        src.clear();
        self.scanned = 0;
        if bytes[0] != VT {
            // stray bytes waiting for a start block that never came
            return Err(MllpError::Garbage { bytes });
        }
        Err(MllpError::Truncated { bytes })
    }
}

/// How many stray bytes outside a frame are held while waiting for a start
/// block: a sender's prefix or keep-alive is a few bytes; more is not MLLP.
pub const MAX_STRAY_BYTES: usize = 4096;

/// What bytes outside a frame (not starting with a start block) are.
#[derive(Debug, PartialEq, Eq)]
enum Stray {
    /// Junk, then at this offset a start block and a message header.
    Frame(usize),
    /// Junk so far: a start block may follow in a later read.
    Wait,
    /// Not MLLP: a message without framing, an HTTP or TLS client, or more
    /// junk than [`MAX_STRAY_BYTES`].
    Garbage,
}

fn stray_before_frame(src: &[u8]) -> Stray {
    // a peer that does not speak MLLP is told at once (the connection
    // closes) rather than left waiting for an answer that never comes
    let http = [
        &b"GET "[..],
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
        b"CONNECT ",
    ];
    let unframed = starts_a_frame(src) == Some(true);
    if unframed || http.iter().any(|m| src.starts_with(m)) || src[0] == 0x16 {
        return Stray::Garbage;
    }
    // a message header after the junk with no start block before it: an
    // unframed message (a sender that sends something first, then no MLLP)
    // (`MSH|^~\&`: the name, the field separator and the encoding
    // characters, not a word of text such as `MSH:` or `MSH-9;`)
    let unframed_later = src.windows(8).take_while(|w| w[0] != VT).any(|w| {
        matches!(&w[..3], b"MSH" | b"FHS" | b"BHS") && w[3..].iter().all(u8::is_ascii_punctuation)
    });
    if unframed_later {
        return Stray::Garbage;
    }
    let mut from = 0;
    while let Some(at) = src[from..].iter().position(|&b| b == VT) {
        let vt = from + at;
        match starts_a_frame(&src[vt + 1..]) {
            Some(true) => return Stray::Frame(vt),
            None => return Stray::Wait,
            Some(false) => from = vt + 1,
        }
    }
    if src.len() > MAX_STRAY_BYTES {
        Stray::Garbage
    } else {
        Stray::Wait
    }
}

/// Whether the bytes after a `0x0B` found inside a frame start a new one
/// (`MSH`, `FHS` or `BHS` and a field separator, after a byte order mark or
/// white space): `None` while too few have arrived to tell.
fn starts_a_frame(after: &[u8]) -> Option<bool> {
    let after = match after {
        [0xEF, 0xBB, 0xBF, rest @ ..] => rest,
        [0xEF] | [0xEF, 0xBB] | [0xFF] | [0xFE] => return None,
        // UTF-16 (a frame the listener refuses, but a frame: told apart
        // from the one before it and answered): `MSH|` a byte each other,
        // after a byte order mark or without one (`M 00`, `00 M`)
        [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..] | [b'A'..=b'Z', 0, ..] | [0, b'A'..=b'Z', ..] => {
            let (low, rest) = match after {
                [0xFF, 0xFE, rest @ ..] => (true, rest),
                [0xFE, 0xFF, rest @ ..] => (false, rest),
                [0, ..] => (false, after),
                _ => (true, after),
            };
            let units: Vec<u8> = rest
                .chunks_exact(2)
                .map(|u| if low { u[0] } else { u[1] })
                .take(4)
                .collect();
            let zero = rest
                .chunks_exact(2)
                .take(4)
                .all(|u| if low { u[1] == 0 } else { u[0] == 0 });
            if !zero {
                return Some(false);
            }
            return match starts_a_frame(&units) {
                Some(answer) => Some(answer),
                None if rest.len() >= 8 => Some(false),
                None => None,
            };
        }
        _ => after,
    };
    let skip = after
        .iter()
        .take_while(|&&b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | VT))
        .count();
    let after = &after[skip..];
    // a segment name and the field separator after it (`MSH|`), not a word
    // of the text that starts with those letters (`MSHOWED`)
    let names: [&[u8]; 3] = [b"MSH", b"FHS", b"BHS"];
    let head = &after[..after.len().min(3)];
    if !names.iter().any(|n| n.starts_with(head)) {
        return Some(false);
    }
    // (a prefix of a segment name so far, or nothing: wait)
    after.get(3).map(|sep| sep.is_ascii_punctuation())
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

/// The frames of a complete byte string (a file, a MESH message a sender wrote
/// with its MLLP framing), read by the same rules as a connection, the whole
/// string being all there is. `None` when it is not only whole frames: bytes
/// outside a frame, a frame cut short or abandoned, or none at all.
pub fn frames_of(bytes: &[u8]) -> Option<Vec<Bytes>> {
    // the usual answer without a copy: what does not start with a frame
    let first = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace() && **b != 0)?;
    if !matches!(*first, VT | 0xEF) {
        return None;
    }
    let mut codec = MllpCodec::new(bytes.len().max(1));
    let mut src = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut src).ok()? {
        frames.push(frame);
    }
    let whole = src.is_empty()
        && codec.take_abandoned().is_empty()
        && codec.take_stray().is_empty()
        && !frames.is_empty();
    whole.then_some(frames)
}

/// How long a frame whose `0x1C` is the last byte received waits for the byte
/// after it before it is taken as ended there (a sender that leaves out the CR
/// and waits for its answer waits this much longer).
pub const FS_GRACE: Duration = Duration::from_millis(100);

/// The next frame from `framed`, as `framed.next()` gives it, except that a
/// frame whose `0x1C` is the last byte received ends there when nothing has
/// followed within [`FS_GRACE`] (see the module docs). Cancel-safe, as
/// `framed.next()` is.
pub async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, MllpCodec>,
) -> Option<Result<Bytes, MllpError>> {
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(item) = framed.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if !framed.codec().awaiting_end() {
            grace = None;
            return Poll::Pending;
        }
        let sleep = grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(FS_GRACE)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        grace = None;
        let mut buf = std::mem::take(framed.read_buffer_mut());
        let frame = framed.codec_mut().end_at_fs(&mut buf);
        *framed.read_buffer_mut() = buf;
        match frame {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Poll::Pending,
        }
    })
    .await
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

    #[test]
    fn frames_of_a_whole_string() {
        let got = frames_of(b"\r\n\x0bA\x1c\r\x0bB\x1c").expect("two frames");
        assert_eq!(got, [Bytes::from_static(b"A"), Bytes::from_static(b"B")]);
        // not only frames: nothing
        for bad in [
            &b""[..],
            b"MSH|",
            b"\x0bA\x1c\rjunk",
            b"\x0bA",
            b"\x0bA\x0bMSH|B\x1c\r",
        ] {
            assert_eq!(frames_of(bad), None, "{bad:?}");
        }
        // a 0x0B not followed by a segment name is data
        assert_eq!(
            frames_of(b"\x0bA\x0bB\x1c\r"),
            Some(vec![Bytes::from_static(b"A\x0bB")])
        );
    }
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
        let (frames, err) = decode_all(&[b"\x0bMSH|A\x1c\x0bMSH|B\x1c"], 100);
        assert_eq!(frames, vec![Bytes::from("MSH|A"), Bytes::from("MSH|B")]);
        assert!(err.is_none());
        // split after the 0x0B: wait for what follows it
        let (frames, _) = decode_all(&[b"\x0bMSH|A\x1c\x0b", b"MSH|B\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("MSH|A"), Bytes::from("MSH|B")]);
        // 0x1C 0x0B followed by no header is data (U+0B1C in UTF-16LE)
        let (frames, _) = decode_all(&[b"\x0bMSH|A\x1c\x0b\0B\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("MSH|A\x1c\x0b\0B")]);
    }

    #[test]
    fn a_frame_ending_at_the_last_byte_received_waits_for_what_follows() {
        let mut codec = MllpCodec::new(100);
        let mut buf = BytesMut::from(&b"\x0bMSH|a\r\x1c"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(codec.awaiting_end());
        // the CR comes: the frame ends, with it
        buf.extend_from_slice(b"\r\x0bMSH|b\r\x1c");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|a\r"))
        );
        assert!(!codec.awaiting_end());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        // nothing comes (a sender that leaves out the CR): the caller ends it
        assert!(codec.awaiting_end());
        assert_eq!(codec.end_at_fs(&mut buf), Some(Bytes::from("MSH|b\r")));
        assert!(buf.is_empty() && !codec.awaiting_end());
        assert_eq!(codec.end_at_fs(&mut buf), None);
        // a late CR is white space before the next frame
        buf.extend_from_slice(b"\r\x0bMSH|c\x1c\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Bytes::from("MSH|c")));
        // an FS inside a segment, the last byte so far: never ended by the
        // caller after a grace, however long the pause (the message is not
        // cut short there)
        let mut buf = BytesMut::from(&b"\x0bMSH|a\rPID|MARG\x1c"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(!codec.awaiting_end());
        buf.extend_from_slice(b"ARET\r\x1c\r");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|a\rPID|MARG\x1cARET\r"))
        );
    }

    #[test]
    fn an_fs_followed_by_data_is_part_of_the_message() {
        // in one write, or with the data arriving after the FS
        let (frames, err) = decode_all(&[b"\x0bPID|AL\x1cICE|1\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("PID|AL\x1cICE|1")]);
        assert!(err.is_none());
        let (frames, _) = decode_all(&[b"\x0bPID|AL\x1c", b"ICE|1\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("PID|AL\x1cICE|1")]);
        // a space is data too; an LF ends the frame
        let (frames, _) = decode_all(&[b"\x0bA\x1c B\x1c\n\x0bC\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("A\x1c B"), Bytes::from("C")]);
    }

    #[test]
    fn a_start_block_inside_a_frame_abandons_it_and_starts_anew() {
        let mut codec = MllpCodec::new(100);
        let mut buf = BytesMut::from(&b"\x0bMSH|half\x0bMSH|whole\x1c\r"[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|whole"))
        );
        assert_eq!(codec.take_abandoned(), vec![Bytes::from("\x0bMSH|half")]);
        assert!(codec.take_abandoned().is_empty());
        // across reads
        let mut buf = BytesMut::from(&b"\x0bMSH|ha"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lf\x0b\x0bMSH|b\x1c\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Bytes::from("MSH|b")));
        assert_eq!(
            codec.take_abandoned(),
            vec![Bytes::from("\x0bMSH|half"), Bytes::from("\x0b")]
        );
        // a 0x0B followed by anything but a segment name is data (a manual
        // line break pasted into a name or a report), also split across reads
        let mut buf = BytesMut::from(&b"\x0bMSH|MAR\x0b"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"GARET\x1c\r");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|MAR\x0bGARET"))
        );
        let mut buf = BytesMut::from(&b"\x0bMSH|a\x0bMS"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "MS: not known yet");
        buf.extend_from_slice(b"X|b\x1c\r");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|a\x0bMSX|b"))
        );
        assert!(codec.take_abandoned().is_empty());
        // a word that starts with a segment's letters is data too
        let mut buf = BytesMut::from(&b"\x0bMSH|the film \x0bBHSIDE\x1c\r"[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Bytes::from("MSH|the film \x0bBHSIDE"))
        );
        assert!(codec.take_abandoned().is_empty());
    }

    #[test]
    fn nuls_and_a_byte_order_mark_before_a_frame_are_skipped() {
        let (frames, err) = decode_all(&[b"\0\0\xEF\xBB\xBF\x0bA\x1c\r\0\x0bB\x1c\r"], 100);
        assert_eq!(frames, vec![Bytes::from("A"), Bytes::from("B")]);
        assert!(err.is_none());
        // a BOM not before a start block is still garbage
        let (_, err) = decode_all(&[b"\xEF\xBB\xBFMSH|"], 100);
        assert!(err.unwrap().contains("outside an MLLP frame"));
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

    /// Junk that comes before a frame, in the same read or its own, is kept,
    /// and the frame is read; a doubled end block between frames is skipped.
    #[test]
    fn bytes_before_a_start_block_are_kept_and_the_frame_read() {
        let mut codec = MllpCodec::new(100);
        let mut buf = BytesMut::from(&b"junk\x0bMSH|1\x1c\r\x1c\r\x0bMSH|2\x1c\r"[..]);
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&first[..], b"MSH|1");
        assert_eq!(codec.take_stray(), vec![Bytes::from("junk")]);
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&second[..], b"MSH|2");
        assert!(codec.take_stray().is_empty());
        assert!(buf.is_empty());
        // the junk in a read of its own, the start block at the end of one
        // read and the header in the next, a 0x0B in the junk that starts
        // no frame
        for chunks in [
            &[&b"PING"[..], b"\x0bMSH|3\x1c\r"][..],
            &[b"PI\x0b", b"NG\x0bMSH|3\x1c\r"],
            &[b"PING\x0b", b"MSH|3\x1c\r"],
            &[b"PING\x0bM", b"SH|3\x1c\r"],
        ] {
            let mut codec = MllpCodec::new(100);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for chunk in chunks {
                buf.extend_from_slice(chunk);
                if let Some(frame) = codec.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, [Bytes::from("MSH|3")], "{chunks:?}");
            let stray = codec.take_stray().concat();
            assert!(
                stray.starts_with(b"PI") && stray.ends_with(b"NG"),
                "{chunks:?}"
            );
        }
        // junk with no frame after it before the peer closes is garbage
        let (frames, err) = decode_all(&[b"PING"], 100);
        assert!(frames.is_empty());
        assert!(err.unwrap().contains("outside an MLLP frame"));
    }

    /// A UTF-16 message after a start block (by its byte order mark) starts
    /// a frame, as a UTF-8 one does.
    #[test]
    fn a_utf16_header_starts_a_frame() {
        assert_eq!(starts_a_frame(b"\xFF\xFEM\0S\0H\0|\0"), Some(true));
        assert_eq!(starts_a_frame(b"\xFE\xFF\0M\0S\0H\0|"), Some(true));
        assert_eq!(starts_a_frame(b"M\0S\0H\0|\0"), Some(true));
        assert_eq!(starts_a_frame(b"\0M\0S\0H\0|"), Some(true));
        assert_eq!(starts_a_frame(b"M\0S\0"), None);
        assert_eq!(starts_a_frame(b"X\0Y\0Z\0|\0"), Some(false));
        assert_eq!(starts_a_frame(b"\xFF\xFEM\0S"), None);
        assert_eq!(starts_a_frame(b"\xFF"), None);
        assert_eq!(starts_a_frame(b"\xFF\xFEX\0Y\0"), Some(false));
        assert_eq!(starts_a_frame(b"\xFF\xFEM\x04S\0H\0|\0"), Some(false));
    }

    /// A peer that does not speak MLLP is refused at once, and so is more
    /// junk than a prefix with no frame.
    #[test]
    fn what_is_not_mllp_is_refused_at_once() {
        for bytes in [
            &b"MSH|^~\\&|LAB\r"[..],
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            &[b'x'; MAX_STRAY_BYTES + 1],
            b"PING\r\nMSH|^~\\&|LAB\r",
        ] {
            let mut codec = MllpCodec::new(100);
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(codec.decode(&mut buf), Err(MllpError::Garbage { .. })),
                "{:?}",
                &bytes[..bytes.len().min(20)]
            );
        }
    }

    #[test]
    fn too_large_detected_before_end() {
        let mut codec = MllpCodec::new(10);
        let mut buf = BytesMut::from(&b"\x0b0123456789ABC"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, MllpError::TooLarge { limit: 10, .. }),
            "{err:?}"
        );
        // what arrived is told, not only what is kept
        assert_eq!(err.received_bytes(), 14);
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
                proptest::collection::vec(any::<u8>().prop_filter("no FS or VT", |b| *b != FS && *b != VT), 0..200), 1..6),
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
