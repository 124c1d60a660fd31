//! TLS for MLLP, with rustls (the `ring` provider reqwest already brings): the
//! server side of a listener (`[listeners.<id>.tls]`, optionally requiring client
//! certificates) and the client side of `junction send` and `junction load`.
//! Also the `allowed_peers` list of a listener ([`PeerNet`]).
//!
//! What it does not do: reload certificates while running (a renewed one is read
//! at the next start), check revocation (CRL, OCSP), or offer protocol versions
//! beyond rustls' safe defaults (TLS 1.2 and 1.3). Certificates and keys are PEM
//! files; their contents are never logged.
//!
//! # Invariants
//! - Every file problem names the config field and the path, never file contents.
//! - A listener with `client_ca_file` completes no handshake without a client
//!   certificate issued by one of those CAs.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    RootCertStore,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `[listeners.<id>.tls]`: the listener speaks MLLP inside TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the listener presents (its own certificate first).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates. When set, a sender must present a certificate
    /// issued by one of them (mutual TLS); without it, any sender may connect.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// A TLS file that could not be used: which config field, which file, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {}: {problem}", path.display())]
pub struct TlsFileError {
    pub field: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

fn file_error(field: &'static str, path: &Path, problem: impl Into<String>) -> TlsFileError {
    TlsFileError {
        field,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| file_error(field, path, format!("cannot be read: {e}")))
}

/// Every certificate of a PEM file (at least one).
fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(field, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, path, format!("is not a readable PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error(field, path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

/// The private key of a PEM file.
fn private_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            field,
            path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// A root store of the CA certificates in a PEM file.
fn roots(field: &'static str, path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(field, path)? {
        roots.add(certificate).map_err(|e| {
            file_error(
                field,
                path,
                format!("holds an unusable CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}

impl ServerTlsConfig {
    /// Every problem of the files, each read on its own (a missing
    /// `key_file` is said beside a missing `cert_file`, not after it is
    /// fixed); when each is usable alone, whether they go together.
    pub fn problems(&self) -> Vec<TlsFileError> {
        let mut problems = Vec::new();
        if let Err(e) = certificates("cert_file", &self.cert_file) {
            problems.push(e);
        }
        if let Err(e) = private_key("key_file", &self.key_file) {
            problems.push(e);
        }
        if let Some(path) = &self.client_ca_file {
            if let Err(e) = roots("client_ca_file", path) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            if let Err(e) = self.acceptor() {
                problems.push(e);
            }
        }
        problems
    }

    /// Reads the files and builds the listener's TLS acceptor.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsFileError> {
        let chain = certificates("cert_file", &self.cert_file)?;
        if let Some(leaf) = chain.first() {
            let now = std::time::SystemTime::now();
            if let Some(problem) = not_version_3(leaf).or_else(|| out_of_date(leaf, now)) {
                return Err(file_error("cert_file", &self.cert_file, problem));
            }
        }
        let key = private_key("key_file", &self.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error("cert_file", &self.cert_file, e.to_string()))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots("client_ca_file", path)?),
                    provider(),
                )
                .build()
                .map_err(|e| file_error("client_ca_file", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            file_error(
                "key_file",
                &self.key_file,
                format!(
                    "does not go with `cert_file` {}: {e}",
                    self.cert_file.display()
                ),
            )
        })?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A failed handshake's reason as ops read it: rustls' text, with what its
/// terser reasons mean added (`UnsupportedCertVersion`: the peer's
/// certificate is X.509 version 1 or 2).
pub(crate) fn handshake_error(err: &std::io::Error) -> String {
    let text = err.to_string();
    if text.contains("UnsupportedCertVersion") {
        format!("{text} (the peer's certificate is X.509 version 1 or 2; TLS needs version 3)")
    } else {
        text
    }
}

/// Why a certificate of an older X.509 version cannot be served (`None`:
/// version 3, or it does not read, which rustls will say): TLS needs
/// version 3, and rustls would otherwise report the key as not matching.
fn not_version_3(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let version = match parsed.tbs_certificate.version {
        x509_cert::Version::V3 => return None,
        x509_cert::Version::V1 => 1,
        x509_cert::Version::V2 => 2,
    };
    Some(format!(
        "holds an X.509 version {version} certificate; TLS needs version 3 (issue it with \
         extensions, e.g. `openssl x509 -req ... -extfile` naming its subjectAltName)"
    ))
}

/// Why a certificate cannot be used at `now`: it expired, or is not valid
/// yet (`None`: it is, or its dates do not read, which rustls will say).
/// A listener serving it would fail every sender that checks certificates.
fn out_of_date(cert: &CertificateDer<'_>, now: std::time::SystemTime) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let validity = &parsed.tbs_certificate.validity;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    let day = |d: std::time::Duration| {
        jiff::Timestamp::from_second(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    let (not_before, not_after) = (
        validity.not_before.to_unix_duration(),
        validity.not_after.to_unix_duration(),
    );
    if now > not_after {
        Some(format!(
            "holds a certificate that expired on {}: no sender that checks certificates would connect",
            day(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "holds a certificate not valid before {}: no sender that checks certificates would connect",
            day(not_before)
        ))
    } else {
        None
    }
}

/// The subject of a certificate as RFC 4514 text (`CN=pas.trust.nhs.uk,O=…`),
/// or `unreadable` when it does not parse (it was verified, so it should).
pub(crate) fn subject(cert: &CertificateDer<'_>) -> String {
    use x509_cert::der::Decode;
    match x509_cert::Certificate::from_der(cert.as_ref()) {
        Ok(parsed) => parsed.tbs_certificate.subject.to_string(),
        Err(_) => "unreadable".to_string(),
    }
}

/// A client config trusting only the CA certificates of `ca_file` (for a
/// TLS connection to another kind of server: PostgreSQL, `[store] tls_ca_file`).
pub(crate) fn client_config_trusting(
    field: &'static str,
    ca_file: &Path,
) -> Result<rustls::ClientConfig, TlsFileError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(field, ca_file, e.to_string()))?
        .with_root_certificates(roots(field, ca_file)?)
        .with_no_client_auth())
}

/// The client side: which CAs to trust, and the client's own certificate
/// when the listener asks for one.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of `ca_file`; presents `cert_file` with
    /// `key_file` when both are given; checks the listener's certificate
    /// against `server_name`, else against the host it connects to.
    pub fn load(
        ca_file: &Path,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<ClientTls, TlsFileError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error("tls-ca", ca_file, e.to_string()))?
            .with_root_certificates(roots("tls-ca", ca_file)?);
        let config = match (cert_file, key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    {
                        let chain = certificates("tls-cert", cert)?;
                        // (rustls would call a version 1 one a key mismatch)
                        if let Some(problem) = chain.first().and_then(not_version_3) {
                            return Err(file_error("tls-cert", cert, problem));
                        }
                        chain
                    },
                    private_key("tls-key", key)?,
                )
                .map_err(|e| {
                    file_error(
                        "tls-key",
                        key,
                        format!("does not go with {}: {e}", cert.display()),
                    )
                })?,
            (Some(cert), None) => {
                return Err(file_error(
                    "tls-cert",
                    cert,
                    "needs its private key (tls-key)",
                ))
            }
            (None, Some(key)) => {
                return Err(file_error(
                    "tls-key",
                    key,
                    "needs its certificate (tls-cert)",
                ))
            }
            (None, None) => builder.with_no_client_auth(),
        };
        let server_name = match server_name {
            Some(name) => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|e| file_error("tls-server-name", Path::new(name), e.to_string()))?,
            ),
            None => None,
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The connector, and the name the listener's certificate must carry:
    /// the configured one, else `host` (a DNS name or an IP address).
    pub(crate) fn for_host(&self, host: &str) -> Option<(TlsConnector, ServerName<'static>)> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.trim_matches(['[', ']']).to_string()).ok()?,
        };
        Some((self.connector.clone(), name))
    }
}

/// One entry of a listener's `allowed_peers`: an address (`10.1.2.3`,
/// `::1`) or a network in CIDR form (`10.1.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet {
    net: ipnet::IpNet,
}

impl PeerNet {
    /// Whether `ip` is in this network (an IPv4 peer seen on an IPv6 socket,
    /// `::ffff:10.1.2.3`, counts as `10.1.2.3`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip.to_canonical())
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.net.fmt(f)
    }
}

impl FromStr for PeerNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(PeerNet { net: net.trunc() });
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(PeerNet {
                net: ipnet::IpNet::from(ip),
            }),
            Err(_) => Err(format!(
                "invalid peer `{s}`, expected an IP address (`10.1.2.3`) or a network in CIDR form (`10.1.0.0/16`)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for PeerNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid from 2026-11-25 02:14:45 to 2026-11-27
    /// 02:14:45 UTC (`openssl req -x509 -days 2`).
    const TWO_DAYS: &str = "-----BEGIN CERTIFICATE-----
MIIBhDCCASugAwIBAgIULTKfwfyBmCraToQP5sZ6UNTFYg4wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNanVuY3Rpb24tdGVzdDAeFw0yNjExMjUwMjE0NDVaFw0yNjEx
MjcwMjE0NDVaMBgxFjAUBgNVBAMMDWp1bmN0aW9uLXRlc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASuEpezpa/ZzNA2XRpJsZjO/LTP7gXmzEoZ6j7zRfNQTi6z
c/YmFrHdmyAp37WP0jMFSLmIO/7EsVVE64rv6WtWo1MwUTAdBgNVHQ4EFgQU6g7m
93wDCEo/AOTLo+TOHo4VCDUwHwYDVR0jBBgwFoAU6g7m93wDCEo/AOTLo+TOHo4V
CDUwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiB4iF4STIJWsfrv
g0L91H5P0DeGE9J+2zfepeaFfc0XeAIgWHpUxeRofos11/8Xx1ybeXBuVLtkCg5M
RgEg+TJR0hY=
-----END CERTIFICATE-----
";

    /// A self-signed X.509 version 1 certificate (`openssl x509 -req` with no
    /// `-extfile`), valid to 2126.
    const VERSION_1: &str = "-----BEGIN CERTIFICATE-----
MIIBKTCBzwIUXQa2qjGAToCNUhUuYI2iySHqCqUwCgYIKoZIzj0EAwIwFjEUMBIG
A1UEAwwLanVuY3Rpb24tdjEwIBcNMjYxMTI1MDcwNTMyWhgPMjEyNjExMDEwNzA1
MzJaMBYxFDASBgNVBAMMC2p1bmN0aW9uLXYxMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEXRW78y+yV1qcpVdkcvPd5px6BFsoZ33RcZwcU77VaYKWubehKY7Y1lzr
89tqs1v7OuW8B0DAYaUIUFUyu1H0SzAKBggqhkjOPQQDAgNJADBGAiEAjYeULWpm
TFZeVcgYCtSdQ3EROmvA5Aywb7LfsQ5gOjACIQDiiJTdjAAvIsZbRixxQ3a2SBKl
Qb073+BKpsrKqkBKHw==
-----END CERTIFICATE-----
";

    #[test]
    fn a_version_1_certificate_is_said_so() {
        let parse = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let problem = not_version_3(&parse(VERSION_1)).unwrap();
        assert!(problem.contains("X.509 version 1"), "{problem}");
        assert_eq!(not_version_3(&parse(TWO_DAYS)), None);
        // a sender's version 1 certificate, as rustls refuses it
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: Other(OtherError(UnsupportedCertVersion))",
        );
        assert!(handshake_error(&refused).ends_with("X.509 version 1 or 2; TLS needs version 3)"));
        // a client's own version 1 certificate (`junction send --tls-cert`,
        // an MLLP destination's `tls_cert_file`): named as such, not as a
        // key that does not match
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client.key"),
        );
        std::fs::write(&ca, TWO_DAYS).unwrap();
        std::fs::write(&cert, VERSION_1).unwrap();
        std::fs::write(&key, "not read").unwrap();
        let err = ClientTls::load(&ca, Some(&cert), Some(&key), None).unwrap_err();
        assert!(err.to_string().contains("X.509 version 1"), "{err}");
    }

    #[test]
    fn a_certificate_out_of_its_dates_is_said_so() {
        let cert = CertificateDer::pem_slice_iter(TWO_DAYS.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let at = |text: &str| {
            let t: jiff::Timestamp = text.parse().unwrap();
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_second() as u64)
        };
        assert_eq!(out_of_date(&cert, at("2026-11-26T00:00:00Z")), None);
        let expired = out_of_date(&cert, at("2026-11-28T00:00:00Z")).unwrap();
        assert!(
            expired.contains("expired on 2026-11-27 02:14:45 UTC"),
            "{expired}"
        );
        let early = out_of_date(&cert, at("2026-11-24T00:00:00Z")).unwrap();
        assert!(
            early.contains("not valid before 2026-11-25 02:14:45 UTC"),
            "{early}"
        );
    }

    #[test]
    fn peers_are_addresses_or_networks() {
        let net: PeerNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        // an IPv4 peer on a dual-stack socket
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: PeerNet = " 192.168.7.12 ".parse().unwrap();
        assert!(one.contains("192.168.7.12".parse().unwrap()));
        assert!(!one.contains("192.168.7.13".parse().unwrap()));
        // host bits set are ignored, as routers do
        let loose: PeerNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(loose.to_string(), "10.0.0.0/8");
        let v6: PeerNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.1.2.3".parse().unwrap()));
        for bad in ["", "10.1", "10.1.0.0/33", "host.example", "10.0.0.0/8/1"] {
            let err = bad.parse::<PeerNet>().unwrap_err();
            assert!(err.contains("expected an IP address"), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_and_bad_files_name_the_field_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ServerTlsConfig {
            cert_file: dir.path().join("nope.pem"),
            key_file: dir.path().join("key.pem"),
            client_ca_file: None,
        };
        let Err(err) = missing.acceptor() else {
            panic!("a missing file is an error")
        };
        assert_eq!(err.field, "cert_file");
        assert!(
            err.to_string().contains("nope.pem: cannot be read"),
            "{err}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let bad = ServerTlsConfig {
            cert_file: junk.clone(),
            key_file: junk,
            client_ca_file: None,
        };
        let Err(err) = bad.acceptor() else {
            panic!("a file without a certificate is an error")
        };
        assert_eq!(err.field, "cert_file");
        assert!(err.problem.contains("no PEM certificate"), "{err}");
    }
}
