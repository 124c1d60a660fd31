//! The `NHSMESH` authorization header.
//!
//! `NHSMESH {MAILBOX}:{nonce}:{nonce_count}:{ts}:{hmac}` where `ts` is UTC
//! `yyyyMMddHHmm` and `hmac` is the lowercase hex HMAC-SHA256, keyed with the
//! environment's shared secret, of `{MAILBOX}:{nonce}:{nonce_count}:{PASSWORD}:{ts}`.
//!
//! # Invariants
//! - One [`Authenticator`] per client session: its nonce is a fresh UUID v4 and
//!   the count goes up by one for every header it makes (live MESH refuses a
//!   reused nonce/count pair), starting at 0 like NHS's own client.
//! - The password and the shared key never leave this module in a printable form:
//!   [`Authenticator`]'s `Debug` shows the mailbox and the count only.
//!
//! Not done here: clock checks. Live MESH refuses a timestamp more than two hours
//! off; the host clock must be right (NTP).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::Secret;

/// Builds the value of the `Authorization` header (pure: every input given).
///
/// The mailbox is upper-cased, as MESH requires.
pub fn header_value(
    mailbox: &str,
    password: &str,
    shared_key: &[u8],
    nonce: &str,
    nonce_count: u64,
    timestamp: &str,
) -> String {
    let mailbox = mailbox.to_ascii_uppercase();
    let signed = format!("{mailbox}:{nonce}:{nonce_count}:{password}:{timestamp}");
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(shared_key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("hmac-sha256 accepts keys of every length"),
    };
    mac.update(signed.as_bytes());
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("NHSMESH {mailbox}:{nonce}:{nonce_count}:{timestamp}:{digest}")
}

/// The current UTC time as MESH wants it in the header: `yyyyMMddHHmm`.
pub fn timestamp_now() -> String {
    jiff::Timestamp::now().strftime("%Y%m%d%H%M").to_string()
}

/// Makes authorization headers for one client session: one nonce, an increasing count.
pub struct Authenticator {
    mailbox: String,
    password: Secret,
    shared_key: Secret,
    nonce: String,
    count: AtomicU64,
}

impl Authenticator {
    /// A new session for `mailbox` with a fresh random nonce and count 0.
    pub fn new(mailbox: &str, password: Secret, shared_key: Secret) -> Self {
        Self {
            mailbox: mailbox.to_ascii_uppercase(),
            password,
            shared_key,
            nonce: uuid::Uuid::new_v4().to_string(),
            count: AtomicU64::new(0),
        }
    }

    /// The header for the next request (uses up one count).
    pub fn next_header(&self) -> String {
        let count = self.count.fetch_add(1, Ordering::Relaxed);
        header_value(
            &self.mailbox,
            self.password.expose(),
            self.shared_key.expose().as_bytes(),
            &self.nonce,
            count,
            &timestamp_now(),
        )
    }

    /// How many headers this session has made so far, i.e. how many requests it sent.
    pub fn requests_signed(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mailbox", &self.mailbox)
            .field("count", &self.requests_signed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vector() {
        let header = header_value(
            "X26ABC1",
            "password",
            b"TestKey",
            "2c001608-5f09-4840-9611-bea43e666a30",
            0,
            "202511201038",
        );
        assert_eq!(
            header,
            "NHSMESH X26ABC1:2c001608-5f09-4840-9611-bea43e666a30:0:202511201038:\
             510056c14165c786559e7b8585c4974de40cc1708036ccfd0ec20ea96b8328aa"
        );
    }

    #[test]
    fn lower_case_mailbox_is_upper_cased_before_signing() {
        let lower = header_value("x26abc1", "password", b"TestKey", "n", 3, "202511201038");
        let upper = header_value("X26ABC1", "password", b"TestKey", "n", 3, "202511201038");
        assert_eq!(lower, upper);
    }

    #[test]
    fn timestamp_is_twelve_utc_digits() {
        let ts = timestamp_now();
        assert_eq!(ts.len(), 12, "{ts}");
        assert!(ts.bytes().all(|b| b.is_ascii_digit()), "{ts}");
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
        assert!(ts.starts_with(&now.year().to_string()), "{ts}");
    }

    #[test]
    fn count_increases_and_nonce_stays_within_a_session() {
        let auth = Authenticator::new(
            "x26abc1",
            Secret::new("password".into()),
            Secret::new("TestKey".into()),
        );
        let first = auth.next_header();
        let second = auth.next_header();
        let parts = |h: &str| -> Vec<String> {
            h.trim_start_matches("NHSMESH ")
                .split(':')
                .map(str::to_owned)
                .collect()
        };
        let (a, b) = (parts(&first), parts(&second));
        assert_eq!(a[0], "X26ABC1");
        assert_eq!(a[1], b[1], "same nonce within a session");
        assert_eq!((a[2].as_str(), b[2].as_str()), ("0", "1"));
        assert_eq!(auth.requests_signed(), 2);
        let other = Authenticator::new(
            "X26ABC1",
            Secret::new("password".into()),
            Secret::new("TestKey".into()),
        );
        assert_ne!(
            parts(&other.next_header())[1],
            a[1],
            "fresh nonce per session"
        );
        assert!(!format!("{auth:?}").contains("password"));
    }
}
