//! `junction send --to HOST:PORT FILES|DIRS... [--timeout-secs N]`: send HL7
//! files over MLLP and print each ACK. With `--tls-ca FILE` (and for a listener
//! that wants client certificates `--tls-cert`/`--tls-key`), MLLP inside TLS.
//!
//! Directories are walked recursively in sorted order, skipping hidden files
//! and folders (names starting with `.`). A file may hold one message,
//! several (each starting at an `MSH` segment, blank lines between them are
//! fine) or an FHS/BHS batch (the batch envelope segments are not sent).
//! Segment endings are normalised to `\r` (files edited on Unix or Windows
//! use `\n` or `\r\n`).
//!
//! Output: one line per message on stdout, `file  control_id  ACK_CODE`
//! (plus the error text of a NAK), then a summary line. A progress bar goes
//! to stderr when stderr is a terminal.
//!
//! Exit codes: 0 when every message got AA/CA; 1 otherwise (a NAK, a timeout,
//! a lost connection); 2 when it cannot connect at all or finds no message.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::hl7::Hl7Error;
use crate::mllp::client::{read_ack, AckExpected, MllpClient};
use crate::mllp::tls::ClientTls;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Where to send: HOST:PORT of an MLLP listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// HL7 files, or folders to walk recursively.
    #[arg(required = true, value_name = "FILES|DIRS")]
    pub paths: Vec<PathBuf>,
    /// How long to wait for the connection and for each ACK.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// MLLP inside TLS, for `send` and `load`.
#[derive(Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS, trusting the CA certificate(s) of this PEM file for the
    /// listener's certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a listener that asks for one (with --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The name the listener's certificate must carry (default: the host of --to).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client TLS set-up these arguments ask for (`None`: plain TCP).
    pub fn client(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = ClientTls::load(
            ca,
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_server_name.as_deref(),
        )?;
        Ok(Some(tls))
    }
}

/// One message found in a file.
#[derive(Debug, Clone)]
struct Outgoing {
    file: PathBuf,
    bytes: Vec<u8>,
}

/// Counts by outcome.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    /// Sent without an ACK because MSH-15 asked for none (NE), or for one on
    /// error only (ER) and none came.
    unacknowledged: usize,
    errored: usize,
    rejected: usize,
    other: usize,
    failed: usize,
}

impl Tally {
    fn count(&mut self, code: &str) {
        match code {
            "AA" | "CA" => self.accepted += 1,
            "AE" | "CE" => self.errored += 1,
            "AR" | "CR" => self.rejected += 1,
            _ => self.other += 1,
        }
    }

    fn sent(&self) -> usize {
        self.accepted
            + self.unacknowledged
            + self.errored
            + self.rejected
            + self.other
            + self.failed
    }

    fn all_accepted(&self) -> bool {
        self.sent() == self.accepted + self.unacknowledged
    }

    fn summary(&self) -> String {
        let mut line = format!(
            "{} sent: {} AA/CA, {} AE/CE, {} AR/CR, {} errors",
            self.sent(),
            self.accepted,
            self.errored,
            self.rejected,
            self.failed
        );
        if self.other > 0 {
            line.push_str(&format!(", {} unknown ACK codes", self.other));
        }
        if self.unacknowledged > 0 {
            line.push_str(&format!(
                ", {} without an ACK as MSH-15 asked (NE, or ER with no error)",
                self.unacknowledged
            ));
        }
        line
    }
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.paths)?;
    let mut messages = Vec::new();
    for file in &files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let found = match split_messages(&bytes) {
            Ok(found) => found,
            Err(err) => {
                eprintln!("skipped {}: not HL7 v2: {err}", file.display());
                continue;
            }
        };
        if found.is_empty() {
            eprintln!("skipped {}: no MSH segment", file.display());
        }
        for message in found {
            messages.push(Outgoing {
                file: file.clone(),
                bytes: message,
            });
        }
    }
    if messages.is_empty() {
        eprintln!(
            "error: no HL7 message (no MSH segment) found in {} file(s)",
            files.len()
        );
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let tls = args.tls.client()?;
    runtime.block_on(send_all(
        &args.to,
        messages,
        Duration::from_secs(args.timeout_secs.max(1)),
        tls.as_ref(),
    ))
}

async fn send_all(
    to: &str,
    messages: Vec<Outgoing>,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> anyhow::Result<ExitCode> {
    let mut client = match MllpClient::connect_with(to, timeout, tls).await {
        Ok(client) => Some(client),
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(messages.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut tally = Tally::default();
    for message in &messages {
        let control_id = control_id(&message.bytes).unwrap_or_else(|| "-".to_string());
        let file = message.file.display();
        // After a failure the connection is dropped; connect again for the next message.
        if client.is_none() {
            client = MllpClient::connect_with(to, timeout, tls).await.ok();
        }
        let line = match client.as_mut() {
            None => {
                tally.failed += 1;
                format!("{file}  {control_id}  ERROR cannot reconnect to {to}")
            }
            Some(c) => match c.send_message(&message.bytes).await {
                // MSH-15 asked for no ACK now (NE), or for one on error only
                // (ER) and none came: sent as asked; the connection is not reused
                Ok(None) => {
                    client = None;
                    tally.unacknowledged += 1;
                    let why = match AckExpected::of(&message.bytes) {
                        AckExpected::Never => "no ACK asked (MSH-15 NE)",
                        _ => "no error reported (MSH-15 ER)",
                    };
                    format!("{file}  {control_id}  sent: {why}")
                }
                Ok(Some(ack)) => match read_ack(&ack) {
                    Ok(info) => {
                        tally.count(&info.code);
                        let code = if info.code.is_empty() {
                            "-"
                        } else {
                            &info.code
                        };
                        match (&info.text, info.is_accept()) {
                            (Some(text), false) => format!("{file}  {control_id}  {code}  {text}"),
                            _ => format!("{file}  {control_id}  {code}"),
                        }
                    }
                    Err(err) => {
                        tally.failed += 1;
                        format!("{file}  {control_id}  ERROR unreadable ACK: {err}")
                    }
                },
                Err(err) => {
                    tally.failed += 1;
                    client = None;
                    format!("{file}  {control_id}  ERROR {err}")
                }
            },
        };
        // (the ACK's text and the control id are the peer's: escaped)
        let line = super::api_client::printable(&line).into_owned();
        progress.suspend(|| println!("{line}"));
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!("{}", tally.summary());
    Ok(if tally.all_accepted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every file named, and every non-hidden file under every folder named,
/// folders walked in sorted order.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        entries.push(entry.path());
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits file contents into messages with [`crate::hl7::split_batch`]: one
/// message, several (a new one at each `MSH`), or an FHS/BHS batch (the
/// envelope segments are dropped). Segment endings become `\r` and blank
/// lines are dropped; the bytes are otherwise sent as they are in the file
/// (whatever the character set MSH-18 declares). A UTF-8 byte-order mark, at
/// the start or before a message, is dropped. Text before the first MSH that
/// is not a batch header is an error.
pub fn split_messages(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Hl7Error> {
    let bytes = crate::hl7::strip_utf8_bom(bytes);
    let mut normalised = normalise_endings(bytes);
    // a byte-order mark before a message of a batch (files joined together),
    // as the listener skips it
    let mut i = 0;
    while let Some(at) = normalised[i..]
        .windows(4)
        .position(|w| w == b"\r\xEF\xBB\xBF")
    {
        normalised.drain(i + at + 1..i + at + 4);
        i += at + 1;
    }
    // A byte-for-byte view (each byte one char, as ISO 8859-1 would read it):
    // split_batch only looks at ASCII segment names and line ends, and the
    // bytes come back unchanged, whatever the file's real character set.
    let view: String = normalised.iter().map(|&b| char::from(b)).collect();
    let messages = match crate::hl7::split_batch(&view) {
        Ok(messages) => messages,
        Err(Hl7Error::Empty) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    Ok(messages
        .into_iter()
        .map(|m| {
            let mut out = Vec::with_capacity(m.len() + 1);
            for segment in m.split('\r').filter(|s| !s.trim().is_empty()) {
                // Every char of the view is <= U+00FF, so this is lossless.
                out.extend(segment.chars().map(|c| c as u8));
                out.push(b'\r');
            }
            out
        })
        .collect())
}

/// `\r\n` and `\r` end a segment; a lone `\n` ends one as
/// [`crate::hl7::decode`] reads them (`hl7::ends_segment`): broken senders put
/// raw line feeds inside report text.
fn normalise_endings(bytes: &[u8]) -> Vec<u8> {
    let sep = match bytes.get(3) {
        Some(&b) if b.is_ascii_punctuation() => b,
        _ => b'|',
    };
    let cr = crate::hl7::ends_in_cr(bytes);
    let mut out = Vec::with_capacity(bytes.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.push(b'\r');
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' if crate::hl7::ends_segment(bytes, i + 1, sep, cr) => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// MSH-10 of a message (fields counted with MSH-1 as the separator itself).
pub fn control_id(message: &[u8]) -> Option<String> {
    let msh = message.split(|&b| b == b'\r').next()?;
    let sep = *msh.get(3)?;
    let value = msh.split(|&b| b == sep).nth(9)?;
    let value = String::from_utf8_lossy(value).trim().to_string();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(input: &[u8], expected: Result<&[&[u8]], &str>) {
        let got = split_messages(input).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn splits_files_into_messages() {
        let one: &[&[u8]] = &[b"MSH|a\rPID|1\r"];
        check_split(b"MSH|a\rPID|1\r", Ok(one));
        check_split(b"MSH|a\nPID|1\n", Ok(one));
        check_split(b"MSH|a\r\nPID|1\r\n\r\n", Ok(one));
        check_split(b"MSH|a\rPID|1", Ok(one));
        check_split(b"\xEF\xBB\xBFMSH|a\r\rPID|1\r", Ok(one));
        check_split(
            b"MSH|a\nPID|1\n\nMSH|b\nPID|2\nMSH|c\n",
            Ok(&[b"MSH|a\rPID|1\r", b"MSH|b\rPID|2\r", b"MSH|c\r"]),
        );
        check_split(
            b"FHS|^~\\&\rBHS|^~\\&\rMSH|a\rPID|1\rMSH|b\rBTS|2\rFTS|1\r",
            Ok(&[b"MSH|a\rPID|1\r", b"MSH|b\r"]),
        );
        // files joined together, a byte-order mark before each message
        check_split(
            b"\xEF\xBB\xBFMSH|a\rPID|1\r\xEF\xBB\xBFMSH|b\r",
            Ok(&[b"MSH|a\rPID|1\r", b"MSH|b\r"]),
        );
        check_split(b"", Ok(&[]));
        check_split(b"\r\n  \n", Ok(&[]));
        check_split(b"no message here\n", Err("expected 'MSH'"));
    }

    #[test]
    fn keeps_bytes_and_line_feeds_inside_text() {
        // ISO 8859-1 bytes pass through unchanged.
        check_split(
            b"MSH|^~\\&|x|||||||||||||||8859/1\nPID|1||||M\xfcller\n",
            Ok(&[b"MSH|^~\\&|x|||||||||||||||8859/1\rPID|1||||M\xfcller\r"]),
        );
        // A raw line feed inside a field is data, not a segment end.
        check_split(
            b"MSH|a\nOBX|1|TX|||line one\nline two\nNTE|1\n",
            Ok(&[b"MSH|a\rOBX|1|TX|||line one\nline two\rNTE|1\r"]),
        );
    }

    #[test]
    fn reads_the_control_id() {
        let msg = b"MSH|^~\\&|PAS|RAL|J|N|20260101||ADT^A01|CTRL42|P|2.4\rPID|1\r";
        assert_eq!(control_id(msg).as_deref(), Some("CTRL42"));
        assert_eq!(control_id(b"MSH|^~\\&|PAS\r"), None);
        assert_eq!(control_id(b"MS"), None);
        assert_eq!(
            control_id(b"MSH#^~\\&#a#b#c#d#e#f#ADT#X1#P#2.4").as_deref(),
            Some("X1")
        );
    }

    #[test]
    fn walks_folders_sorted_skipping_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/inner")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        for name in ["z.hl7", "a.hl7", ".hidden.hl7", "b/inner/x.hl7", ".git/y"] {
            std::fs::write(root.join(name), "MSH|x\r").unwrap();
        }
        let files = collect_files(&[root.to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.hl7", "b/inner/x.hl7", "z.hl7"]);
        // A hidden file named explicitly is sent.
        let files = collect_files(&[root.join(".hidden.hl7")]).unwrap();
        assert_eq!(files.len(), 1);
        assert!(collect_files(&[root.join("absent")]).is_err());
    }

    #[test]
    fn tally_summary_and_exit_rule() {
        let mut t = Tally::default();
        for code in ["AA", "CA", "AE", "AR", "CR", "ZZ"] {
            t.count(code);
        }
        t.failed += 1;
        assert_eq!(
            t.summary(),
            "7 sent: 2 AA/CA, 1 AE/CE, 2 AR/CR, 1 errors, 1 unknown ACK codes"
        );
        assert!(!t.all_accepted());
        let mut ok = Tally::default();
        ok.count("AA");
        assert!(ok.all_accepted());
    }
}
