//! MLLP client: one TCP connection (plain, or TLS with [`ClientTls`]), one
//! message at a time, each answered by an ACK. Used by `junction send`,
//! `junction load` and the MLLP forward destination.
//!
//! It does not retry, split files or judge the ACK: callers decide what a NAK
//! or a timeout means. [`MllpClient::send_message`] waits only for the ACK the
//! message's MSH-15 asks for (none for `NE`, only an error one for `ER`).
//! [`read_ack`] is a small pure helper that reads MSA-1, MSA-2 and the error
//! text from an ACK with [`crate::hl7`].
//!
//! # Invariants
//! - One message in flight per connection: `send` writes one frame and waits
//!   for exactly one frame back (or the ACK timeout).
//! - After a timeout or an I/O error the connection is in an unknown state
//!   (a late ACK may still arrive): the caller must drop the client and
//!   connect again. `send` refuses to run on such a client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::codec::{next_frame, MllpCodec, MllpError};
use super::tls::ClientTls;
use crate::hl7::Message;

/// Largest ACK accepted. ACKs are a few hundred bytes; this only bounds
/// memory when the peer sends something else.
pub const MAX_ACK_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve `{addr}`: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("`{addr}` resolves to no address")]
    NoAddress { addr: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {} ms", timeout.as_millis())]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("`{addr}`: no host name to check the listener's certificate against (give one with --tls-server-name)")]
    TlsName { addr: String },
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("sending to {peer} failed: {source}")]
    Send { peer: SocketAddr, source: MllpError },
    #[error("no ACK from {peer} within {} ms", timeout.as_millis())]
    AckTimeout { peer: SocketAddr, timeout: Duration },
    #[error("{peer} closed the connection without sending an ACK")]
    Closed { peer: SocketAddr },
    #[error("reading the ACK from {peer} failed: {source}")]
    Receive { peer: SocketAddr, source: MllpError },
    #[error("the connection to {peer} is unusable after an earlier error; connect again")]
    Broken { peer: SocketAddr },
    #[error("the ACK has no MSA segment")]
    NoMsa,
    #[error("the ACK is not readable HL7: {0}")]
    BadAck(#[source] crate::hl7::Hl7Error),
}

/// What the client reads and writes: a TCP stream, or TLS over one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// An MLLP connection.
pub struct MllpClient {
    framed: Framed<Box<dyn Stream>, MllpCodec>,
    peer: SocketAddr,
    ack_timeout: Duration,
    broken: bool,
}

impl std::fmt::Debug for MllpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpClient")
            .field("peer", &self.peer)
            .field("ack_timeout", &self.ack_timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl MllpClient {
    /// Connects to `addr` (`host:port`), giving up after `timeout`. The same
    /// `timeout` bounds the wait for each ACK (see [`MllpClient::with_ack_timeout`]).
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with(addr, timeout, None).await
    }

    /// [`MllpClient::connect`], inside TLS when `tls` is given: the handshake
    /// (checking the listener's certificate) is part of connecting and of its
    /// `timeout`.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        let tls = match tls {
            Some(tls) => {
                // the host of `host:port` (an IPv6 address comes as `[::1]:2575`)
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                Some(tls.for_host(host).ok_or_else(|| ClientError::TlsName {
                    addr: addr.to_string(),
                })?)
            }
            None => None,
        };
        let connect = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
                .await
                .map_err(|source| ClientError::Resolve {
                    addr: addr.to_string(),
                    source,
                })?
                .collect();
            let mut last = None;
            for candidate in &addrs {
                match TcpStream::connect(candidate).await {
                    Ok(stream) => return Ok((stream, *candidate)),
                    Err(err) => last = Some(err),
                }
            }
            Err(match last {
                Some(source) => ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                },
                None => ClientError::NoAddress {
                    addr: addr.to_string(),
                },
            })
        };
        let connect = async {
            let (stream, peer) = connect.await?;
            // One small frame per message: do not wait to coalesce.
            let _ = stream.set_nodelay(true);
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(stream),
                Some((connector, name)) => {
                    Box::new(connector.connect(name, stream).await.map_err(|source| {
                        ClientError::TlsHandshake {
                            addr: addr.to_string(),
                            source,
                        }
                    })?)
                }
            };
            Ok::<_, ClientError>((stream, peer))
        };
        let (stream, peer) = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            ClientError::ConnectTimeout {
                addr: addr.to_string(),
                timeout,
            }
        })??;
        Ok(MllpClient {
            framed: Framed::new(stream, MllpCodec::new(MAX_ACK_BYTES)),
            peer,
            ack_timeout: timeout,
            broken: false,
        })
    }

    /// Sets how long [`MllpClient::send`] waits for each ACK.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends `msg` and waits for the ACK its MSH-15 asks for
    /// ([`AckExpected`]): `Ok(Some(ack))`, or `Ok(None)` when none is due (`NE`:
    /// not waited for; `ER`: none within [`ON_ERROR_GRACE`], so no error was
    /// reported). After `Ok(None)` this connection is not used again (an ACK
    /// could still come late): drop it and connect anew. `SU` with no ACK is
    /// [`ClientError::AckTimeout`], as for a message that asked for one always.
    pub async fn send_message(&mut self, msg: &[u8]) -> Result<Option<Bytes>, ClientError> {
        match AckExpected::of(msg) {
            AckExpected::Always | AckExpected::OnSuccess => self.send(msg).await.map(Some),
            // (the client stays broken: an ACK the peer sends anyway would
            // be taken for the next message's)
            AckExpected::Never => self.write_frame(msg).await.map(|()| None),
            AckExpected::OnError => {
                match self
                    .send_within(msg, self.ack_timeout.min(ON_ERROR_GRACE))
                    .await
                {
                    Ok(ack) => Ok(Some(ack)),
                    // (the client stays broken: a late ACK may still come)
                    Err(ClientError::AckTimeout { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Frames and writes `msg`, leaving the connection marked broken until
    /// an ACK is read (any early return leaves it so).
    async fn write_frame(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Broken { peer: self.peer });
        }
        self.broken = true;
        let peer = self.peer;
        self.framed
            .send(msg)
            .await
            .map_err(|source| ClientError::Send { peer, source })
    }

    /// Frames and sends `msg`, then waits for one frame back: the ACK, as
    /// received (without framing).
    pub async fn send(&mut self, msg: &[u8]) -> Result<Bytes, ClientError> {
        self.send_within(msg, self.ack_timeout).await
    }

    /// [`Self::send`], waiting at most `wait` for the ACK.
    async fn send_within(&mut self, msg: &[u8], wait: Duration) -> Result<Bytes, ClientError> {
        self.write_frame(msg).await?;
        let peer = self.peer;
        let ack = tokio::time::timeout(wait, next_frame(&mut self.framed))
            .await
            .map_err(|_| ClientError::AckTimeout {
                peer,
                timeout: wait,
            })?;
        match ack {
            Some(Ok(ack)) => {
                self.broken = false;
                Ok(ack)
            }
            Some(Err(source)) => Err(ClientError::Receive { peer, source }),
            None => Err(ClientError::Closed { peer }),
        }
    }
}

/// What a message's MSH-15 (accept acknowledgement type, HL7 table 0155)
/// asks of the receiver, read from the bytes about to be sent. Original mode
/// (MSH-15 empty) and `AL` mean an ACK always comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckExpected {
    /// Empty, `AL`, or anything else: wait for the ACK.
    Always,
    /// `NE`: the receiver sends none; do not wait.
    Never,
    /// `ER`: an ACK comes only on error; none within a short grace means none
    /// was reported.
    OnError,
    /// `SU`: an ACK comes only on success; none means it was not accepted.
    OnSuccess,
}

impl AckExpected {
    /// MSH-15 of the message's first segment (`MSH`, any field separator).
    pub fn of(message: &[u8]) -> AckExpected {
        let message = crate::hl7::strip_utf8_bom(message);
        let line = message
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let (Some(b"MSH"), Some(&sep)) = (line.get(..3), line.get(3)) else {
            return AckExpected::Always;
        };
        // fields: [0] "MSH", [1] MSH-2, ... [14] MSH-15
        let msh15 = line.split(|&b| b == sep).nth(14).unwrap_or_default();
        match msh15.trim_ascii().to_ascii_uppercase().as_slice() {
            b"NE" => AckExpected::Never,
            b"ER" => AckExpected::OnError,
            b"SU" => AckExpected::OnSuccess,
            _ => AckExpected::Always,
        }
    }
}

/// Longest wait for an ACK to a message that asked for one on error only
/// (MSH-15 `ER`): a receiver refuses at once or not at all.
pub const ON_ERROR_GRACE: Duration = Duration::from_secs(2);

/// What an ACK says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    /// MSA-1: AA, AE, AR, CA, CE or CR (as sent; may be anything).
    pub code: String,
    /// MSA-2: the control id of the acknowledged message.
    pub control_id: String,
    /// The error text for a NAK: ERR-8 (user message), else the text of
    /// ERR-3 (v2.5+) or ERR-1 (before v2.5), else MSA-3. `None` when empty.
    pub text: Option<String>,
}

impl AckInfo {
    /// AA or CA: the receiver took responsibility for the message.
    pub fn is_accept(&self) -> bool {
        matches!(self.code.as_str(), "AA" | "CA")
    }
}

/// Reads MSA-1, MSA-2 and the error text from an ACK (any character set
/// MSH-18 names, `\r`, `\n` or `\r\n` between segments, escapes decoded).
pub fn read_ack(ack: &[u8]) -> Result<AckInfo, ClientError> {
    let text = crate::hl7::decode(ack).map_err(ClientError::BadAck)?;
    let message = Message::parse(&text).map_err(ClientError::BadAck)?;
    if message.first_segment("MSA").is_none() {
        return Err(ClientError::NoMsa);
    }
    let get = |path: &str| -> Option<String> {
        message
            .get(path)
            .ok()
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    // ERR-8 (user message, v2.5+), ERR-3.2 (error code text, v2.5+),
    // ERR-1.4.2 (code text, before v2.5), the whole ERR-1, then MSA-3.
    let text = ["ERR-8", "ERR-3.2", "ERR-1.4.2", "ERR-1", "MSA-3"]
        .iter()
        .find_map(|path| get(path));
    Ok(AckInfo {
        code: get("MSA-1").unwrap_or_default(),
        control_id: get("MSA-2").unwrap_or_default(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn check(ack: &str, expected: (&str, &str, Option<&str>)) {
        let info = read_ack(ack.as_bytes()).unwrap();
        assert_eq!(
            (
                info.code.as_str(),
                info.control_id.as_str(),
                info.text.as_deref()
            ),
            expected,
            "{ack:?}"
        );
    }

    #[test]
    fn msh_15_says_which_ack_to_wait_for() {
        let msh = |msh15: &str| {
            format!("MSH|^~\\&|PAS|RAL|J|L|20260101||ADT^A01|C1|P|2.5|||{msh15}|AL\rPID|1\r")
        };
        for (msh15, expected) in [
            ("NE", AckExpected::Never),
            (" ne ", AckExpected::Never),
            ("ER", AckExpected::OnError),
            ("SU", AckExpected::OnSuccess),
            ("AL", AckExpected::Always),
            ("", AckExpected::Always),
        ] {
            assert_eq!(
                AckExpected::of(msh(msh15).as_bytes()),
                expected,
                "{msh15:?}"
            );
        }
        // original mode, another field separator, a BOM, LF endings, not HL7
        assert_eq!(
            AckExpected::of(b"MSH|^~\\&|PAS|RAL|J|L|20260101||ADT^A01|C1|P|2.3\r"),
            AckExpected::Always
        );
        assert_eq!(
            AckExpected::of(b"\xEF\xBB\xBFMSH*^~\\&*A*B*C*D*1**ADT^A01*C1*P*2.5***NE\nPID*1"),
            AckExpected::Never
        );
        assert_eq!(AckExpected::of(b"hello"), AckExpected::Always);
    }

    #[test]
    fn reads_msa_and_error_text() {
        check(
            "MSH|^~\\&|J|N|PAS|RAL|20260101||ACK^A01|A1|P|2.4\rMSA|AA|C1\r",
            ("AA", "C1", None),
        );
        check(
            "MSH|^~\\&|J|N|PAS|RAL|20260101||ACK|A1|P|2.5\rMSA|AR|C2\rERR|||101^Required field missing^HL70357|E||||MSH-9 is empty\r",
            ("AR", "C2", Some("MSH-9 is empty")),
        );
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.5\nMSA|AE|C3\nERR|||207^Application internal error^HL70357|E\n",
            ("AE", "C3", Some("Application internal error")),
        );
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.3\r\nMSA|AR|C4|no MSH-10\r\nERR|MSH^1^10^101&Required field missing\r\n",
            ("AR", "C4", Some("Required field missing")),
        );
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.3\rMSA|CR|C5|unsupported version\r",
            ("CR", "C5", Some("unsupported version")),
        );
        // A sender with another field separator, and an escaped text.
        check(
            "MSH#^~\\&#J\rMSA#CE#C6\rERR########bad \\F\\ value\r",
            ("CE", "C6", Some("bad # value")),
        );
    }

    #[test]
    fn no_msa_or_no_msh_is_an_error_and_garbage_never_panics() {
        assert!(matches!(
            read_ack(b"MSH|^~\\&|x\r"),
            Err(ClientError::NoMsa)
        ));
        assert!(matches!(read_ack(b""), Err(ClientError::BadAck(_))));
        assert!(matches!(
            read_ack(b"MSA|AA|1\r"),
            Err(ClientError::BadAck(_))
        ));
        assert!(read_ack(b"\xff\xfe\x00MSA").is_err());
        let info = read_ack(b"MSH|^~\\&|x\rMSA\r").unwrap();
        assert_eq!(info.code, "");
        assert!(!info.is_accept());
    }

    /// A peer that answers each frame with `reply(frame)`.
    async fn peer(reply: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(stream, MllpCodec::default());
            while let Some(Ok(frame)) = framed.next().await {
                match reply(&frame) {
                    Some(answer) => framed.send(answer).await.unwrap(),
                    None => {
                        // Stay silent until the client gives up.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn sends_and_receives_acks_over_a_socket() {
        let addr = peer(|frame| {
            let text = String::from_utf8_lossy(frame);
            let id = text.split('|').nth(9).unwrap_or_default().to_string();
            Some(format!("MSH|^~\\&|||||||ACK|X|P|2.4\rMSA|AA|{id}\r").into_bytes())
        })
        .await;
        let mut client = MllpClient::connect(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap();
        for id in ["A", "B"] {
            let msg = format!("MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|{id}|P|2.4\r");
            let ack = client.send(msg.as_bytes()).await.unwrap();
            let info = read_ack(&ack).unwrap();
            assert_eq!(info.control_id, id);
            assert!(info.is_accept());
        }
    }

    #[tokio::test]
    async fn ack_timeout_breaks_the_connection() {
        let addr = peer(|_| None).await;
        let mut client = MllpClient::connect(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap()
            .with_ack_timeout(Duration::from_millis(100));
        let err = client.send(b"MSH|^~\\&|x\r").await.unwrap_err();
        assert!(matches!(err, ClientError::AckTimeout { .. }), "{err}");
        let err = client.send(b"MSH|^~\\&|x\r").await.unwrap_err();
        assert!(matches!(err, ClientError::Broken { .. }), "{err}");
    }

    #[tokio::test]
    async fn peer_closing_and_refusing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            let _ = stream.shutdown().await;
        });
        let mut client = MllpClient::connect(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap();
        let err = client.send(b"MSH|^~\\&|x\r").await.unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");

        // Nothing listens on a port just released.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let err = MllpClient::connect(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        let err = MllpClient::connect("no-such-host.invalid:2575", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Resolve { .. } | ClientError::NoAddress { .. }
            ),
            "{err}"
        );
    }
}
