//! MLLP client: one TCP connection (plain, or TLS with [`ClientTls`]), one
//! message at a time, each answered by an ACK. Used by `junction send`,
//! `junction load` and the MLLP forward destination.
//!
//! It does not retry, split files or judge the ACK: callers decide what a NAK
//! or a timeout means. [`read_ack`] is a small pure helper that reads MSA-1,
//! MSA-2 and the error text from an ACK with [`crate::hl7`].
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
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::codec::{MllpCodec, MllpError};
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

    /// Frames and sends `msg`, then waits for one frame back: the ACK, as
    /// received (without framing).
    pub async fn send(&mut self, msg: &[u8]) -> Result<Bytes, ClientError> {
        if self.broken {
            return Err(ClientError::Broken { peer: self.peer });
        }
        // Until the ACK is read, any early return leaves the connection broken.
        self.broken = true;
        let peer = self.peer;
        self.framed
            .send(msg)
            .await
            .map_err(|source| ClientError::Send { peer, source })?;
        let ack = tokio::time::timeout(self.ack_timeout, self.framed.next())
            .await
            .map_err(|_| ClientError::AckTimeout {
                peer,
                timeout: self.ack_timeout,
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
