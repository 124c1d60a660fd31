//! MLLP forward destination: sends the original HL7 message to a downstream
//! MLLP listener and waits for its ACK.
//!
//! What is sent is [`DeliveryItem::raw`], the message as it was journaled,
//! byte for byte; for an application acknowledgement queued by the pipeline
//! (MSH-16, a listener's `application_ack`), the journal hands out that ACK
//! as `raw` instead. Connections ([`MllpClient`]) are kept open between
//! deliveries in a small idle pool (one per concurrent delivery); a pooled
//! connection the peer has closed meanwhile is replaced by a fresh one at once.
//! With `tls_ca_file` (and `tls_cert_file`/`tls_key_file` for a listener that
//! asks for a client certificate) it speaks TLS; the files are read at each new
//! connection, so a missing one is a retryable error, not a failed start.
//!
//! It does not rewrite MSH (no new control id or sending application), does not
//! split batches, and does not send documents that are not HL7 (a Bundle from a
//! MESH inbox has no HL7 original): those are refused permanently.
//!
//! # Outcomes
//! - `AA` / `CA`: delivered; `remote_ref` is MSA-2.
//! - No ACK as the message's MSH-15 asked (enhanced mode: `NE` none, `ER`
//!   none within `client::ON_ERROR_GRACE` as no error was reported):
//!   delivered, with no `remote_ref`; that connection is closed, not pooled.
//!   `SU` with no ACK is retried like any missing ACK.
//! - `AR`, `AE`, `CR`, `CE`: permanent (dead letter). The message holds the
//!   ACK code, the HL7 error code (ERR-3.1, or ERR-1.4.1 before v2.5) and the
//!   error location (ERR-2 or ERR-1 segment^sequence^field), never the error
//!   text, which may quote patient data.
//! - Connection refused, connect or ACK timeout, connection closed, an ACK
//!   that is not readable or carries another code: retryable.
//!
//! # Invariants
//! - One message in flight per connection; a connection that failed is dropped,
//!   never reused.
//! - Nothing of the message or the ACK text is logged.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Deliver, Delivered, DeliveryError, DeliveryItem};
use crate::mllp::client::{read_ack, ClientError, MllpClient};
use crate::mllp::tls::{ClientTls, TlsFileError};

/// MSH-10 of the message sent (`None` when it cannot be read).
fn sent_control_id(raw: &[u8]) -> Option<String> {
    let text = crate::hl7::decode(raw).ok()?;
    let message = crate::hl7::Message::parse(&text).ok()?;
    let id = message.get("MSH-10").ok().flatten()?;
    Some(id.trim().to_string())
}

/// Longest MSA-2 kept as `remote_ref`, and longest code or location part kept.
const MAX_ID_CHARS: usize = 64;
const MAX_PART_CHARS: usize = 20;

/// Forwards messages to one MLLP listener.
#[derive(Debug)]
pub struct MllpDestination {
    id: String,
    address: String,
    timeout: Duration,
    idle: Mutex<Vec<MllpClient>>,
    max_idle: usize,
    tls: Option<TlsFiles>,
}

/// The TLS files of an MLLP destination (`tls_*` keys), read at each new
/// connection: a missing file is a retryable delivery error, and a renewed
/// certificate is used without a restart.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl TlsFiles {
    pub fn load(&self) -> Result<ClientTls, TlsFileError> {
        ClientTls::load(
            &self.ca_file,
            self.cert_file.as_deref(),
            self.key_file.as_deref(),
            self.server_name.as_deref(),
        )
    }
}

impl MllpDestination {
    /// A destination forwarding to `address` (`host:port`); `timeout` bounds
    /// the connect and the wait for each ACK; at most `max_idle` connections
    /// are kept open between deliveries.
    pub fn new(id: &str, address: &str, timeout: Duration, max_idle: usize) -> Self {
        MllpDestination {
            id: id.to_string(),
            address: address.to_string(),
            timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            tls: None,
        }
    }

    /// Speaks TLS to the listener with these files (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<TlsFiles>) -> Self {
        self.tls = tls;
        self
    }

    fn take_idle(&self) -> Option<MllpClient> {
        // A poisoned lock only means another delivery panicked holding it; the
        // pool holds plain connections, still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_idle(&self, client: MllpClient) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(client);
        }
    }

    async fn connect(&self) -> Result<MllpClient, DeliveryError> {
        let tls = match &self.tls {
            Some(files) => Some(files.load().map_err(|e| {
                DeliveryError::retry(format!("destination `{}`: TLS {e}", self.id))
            })?),
            None => None,
        };
        MllpClient::connect_with(&self.address, self.timeout, tls.as_ref())
            .await
            .map_err(|e| DeliveryError::retry(format!("destination `{}`: {e}", self.id)))
    }

    async fn forward(&self, item: &DeliveryItem) -> Result<Delivered, DeliveryError> {
        if !item.raw.starts_with(b"MSH") {
            return Err(DeliveryError::permanent(format!(
                "destination `{}`: the original message is not HL7 (it does not start with MSH); \
                 only HL7 messages can be forwarded over MLLP",
                self.id
            )));
        }
        let (mut client, mut reused) = match self.take_idle() {
            Some(client) => (client, true),
            None => (self.connect().await?, false),
        };
        let ack = loop {
            match client.send_message(&item.raw).await {
                Ok(Some(ack)) => break ack,
                // MSH-15 asked for no ACK (NE), or for one on error only (ER)
                // and none came: delivered as asked. The connection is not
                // kept (an ACK could still come late and be taken for the
                // next message's).
                Ok(None) => return Ok(Delivered { remote_ref: None }),
                // The peer closed an idle pooled connection: it never saw this
                // message. Try once more on a new connection.
                Err(ClientError::Send { .. } | ClientError::Closed { .. }) if reused => {
                    client = self.connect().await?;
                    reused = false;
                }
                Err(e) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: {e}",
                        self.id
                    )))
                }
            }
        };
        let info = match read_ack(&ack) {
            Ok(info) => info,
            Err(e) => {
                return Err(DeliveryError::retry(format!(
                    "destination `{}`: the answer from {} is not a usable ACK: {e}",
                    self.id,
                    client.peer()
                )))
            }
        };
        let peer = client.peer();
        // The connection answered properly: keep it for the next delivery.
        self.put_idle(client);
        let code = info.code.as_str();
        match code {
            "AA" | "CA" => {
                // (what was sent may be an application acknowledgement,
                // with a control id of its own: that is what its CA names)
                if info.control_id != item.control_id
                    && sent_control_id(&item.raw).as_deref() != Some(info.control_id.as_str())
                {
                    tracing::warn!(destination = %self.id, control_id = %item.control_id,
                        msa_2 = %clip(&info.control_id, MAX_ID_CHARS), "the downstream ACK names another control id");
                }
                Ok(Delivered {
                    remote_ref: Some(clip(&info.control_id, MAX_ID_CHARS)),
                })
            }
            "AR" | "AE" | "CR" | "CE" => Err(DeliveryError::permanent(format!(
                "destination `{}`: {peer} answered {code}{}",
                self.id,
                nak_detail(&ack)
            ))),
            other => Err(DeliveryError::retry(format!(
                "destination `{}`: {peer} answered MSA-1 `{}`, expected AA, AE, AR, CA, CE or CR",
                self.id,
                clip(other, MAX_PART_CHARS)
            ))),
        }
    }
}

impl Deliver for MllpDestination {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        async move {
            // Connect and ACK wait together within timeout_secs (each alone is
            // bounded by it too, inside the client).
            match tokio::time::timeout(self.timeout, self.forward(item)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(DeliveryError::retry(format!(
                    "destination `{}`: no ACK from {} within {} s (timeout_secs)",
                    self.id,
                    self.address,
                    self.timeout.as_secs()
                ))),
            }
        }
        .boxed()
    }
}

/// ` (error code 207, at PID^1^3)` from an ERR segment, or an empty string.
/// Only codes and locations, made of letters, digits, `.`, `-` and `_`.
fn nak_detail(ack: &[u8]) -> String {
    let Ok(text) = crate::hl7::decode(ack) else {
        return String::new();
    };
    let Ok(message) = crate::hl7::Message::parse(&text) else {
        return String::new();
    };
    let get = |path: &str| -> Option<String> {
        let value = message.get(path).ok().flatten()?;
        let value = value.trim();
        let safe = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        safe.then(|| clip(value, MAX_PART_CHARS))
    };
    let code = get("ERR-3.1").or_else(|| get("ERR-1.4.1"));
    let location = ["ERR-2", "ERR-1"].iter().find_map(|field| {
        let parts: Vec<String> = (1..=3)
            .map_while(|n| get(&format!("{field}.{n}")))
            .collect();
        (!parts.is_empty()).then(|| parts.join("^"))
    });
    let mut parts = Vec::new();
    if let Some(code) = code {
        parts.push(format!("error code {code}"));
    }
    if let Some(location) = location {
        parts.push(format!("at {location}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ack: &str, expected: &str) {
        assert_eq!(nak_detail(ack.as_bytes()), expected, "{ack:?}");
    }

    #[test]
    fn nak_detail_keeps_codes_and_locations_only() {
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.5\rMSA|AR|C2\rERR||PID^1^3|101^Required field missing^HL70357|E||||SMITH is not valid\r",
            " (error code 101, at PID^1^3)",
        );
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.3\rMSA|AE|C4\rERR|PID^1^5^102&Data type error\r",
            " (error code 102, at PID^1^5)",
        );
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.3\rMSA|AE|C4|bad\r",
            "",
        );
        // Free text where a code belongs is dropped.
        check(
            "MSH|^~\\&|J|N|||20260101||ACK|A1|P|2.5\rMSA|AR|C2\rERR|||John Smith 1970^x|E\r",
            "",
        );
        check("garbage", "");
    }
}
