//! `junction load --to HOST:PORT --connections N --messages M [--file F] [--warmup W]`:
//! an MLLP load generator.
//!
//! N connections (one tokio task each) share M messages, one in flight per
//! connection. Every message is the template (a built-in ADT^A01, or the
//! first message of `--file`) with a unique MSH-10, so the receiver's
//! duplicate detection never short-cuts the work. W warm-up messages go first
//! and are not measured. Each ACK's latency (send to ACK) goes into an HDR
//! histogram.
//!
//! Output: a readable report, then one JSON line with the same numbers (for
//! BENCHMARKS.md). Exit 0 when every ACK was AA/CA; 1 otherwise; 2 when it
//! cannot connect.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::send::split_messages;
use crate::mllp::client::{read_ack, AckExpected, MllpClient};

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Where to send: HOST:PORT of an MLLP listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Concurrent connections, one message in flight on each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Messages to send and measure, over all connections.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Template message: the first message of this file (default: a built-in ADT^A01).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Messages sent before measuring starts.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// How long to wait for each connection and each ACK.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Spread the messages over this many patients: PID-3 of message n
    /// becomes the local MRN `LOADP<n mod N>^^^LOAD^MR` (default: the
    /// template's patient for every message, so a destination applies them
    /// one at a time, in order).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub patients: Option<u64>,
    #[command(flatten)]
    pub tls: super::send::TlsArgs,
}

/// A realistic UK PAS admission (test NHS number 9434765919, valid check digit).
/// MSH-15/16 are empty: original acknowledgement mode (AA).
pub const DEFAULT_TEMPLATE: &str = concat!(
    "MSH|^~\\&|PAS|RAL|JUNCTION|NCRS|20260315093000||ADT^A01^ADT_A01|LOAD0000000001|P|2.4|||||GBR|UNICODE UTF-8\r",
    "EVN|A01|20260315093000|||C3456789^MORGAN^HELEN^^^DR\r",
    "PID|1||9434765919^^^NHS^NH~RAL1234567^^^RAL^MR||TESTPATIENT^ALEX^JAMES^^MR||19800101|M|||1 TEST STREET^^LONDON^^NW3 2QG^GBR||020 7794 0500^PRN^PH|||||||||||||||||||NSTS01\r",
    "PD1|||THE TEST SURGERY^^F83004|G1234567^GPNAME^TEST^^^DR\r",
    "NK1|1|TESTPATIENT^SAM^^^MRS|SPO^Spouse^HL70063|1 TEST STREET^^LONDON^^NW3 2QG^GBR|020 7794 0501\r",
    "PV1|1|I|RAL-WARD7^BAY2^BED3^RAL||||C3456789^MORGAN^HELEN^^^DR|||110||||19|||||RAL123456^^^RAL^VN|||||||||||||||||||||||||20260315093000\r",
    "AL1|1|DA|1191^PENICILLIN^L|SV|RASH\r",
    "DG1|1||I21.9^Acute myocardial infarction, unspecified^I10|||A\r",
);

/// The numbers of one run (also the JSON line).
#[derive(Debug, Serialize)]
struct Report {
    connections: u32,
    messages: u64,
    warmup: u64,
    elapsed_secs: f64,
    msgs_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    accepted: u64,
    not_accepted: u64,
    errors: u64,
}

/// What one connection saw.
struct Outcome {
    histogram: Histogram<u64>,
    accepted: u64,
    not_accepted: u64,
    errors: u64,
    /// The first few problems, for the report.
    problems: Vec<String>,
}

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let template = match &args.file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            split_messages(&bytes)
                .with_context(|| format!("{} is not HL7 v2", path.display()))?
                .into_iter()
                .next()
                .with_context(|| format!("no HL7 message (no MSH segment) in {}", path.display()))?
        }
        None => DEFAULT_TEMPLATE.as_bytes().to_vec(),
    };
    let template = Template::new(&template, args.patients)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(load(args, Arc::new(template)))
}

async fn load(args: LoadArgs, template: Arc<Template>) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let tls = args.tls.client()?;
    let mut clients = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        match MllpClient::connect_with(&args.to, timeout, tls.as_ref()).await {
            Ok(client) => clients.push(client),
            Err(err) => {
                eprintln!("error: {err}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    // A per-run prefix keeps control ids unique across runs against one journal.
    let run_id = fastrand::u32(..);
    if args.warmup > 0 {
        eprintln!(
            "warming up: {} message(s) on {} connection(s)",
            args.warmup, args.connections
        );
        let (back, _) = phase(clients, &template, run_id, 0, args.warmup).await?;
        clients = back;
        if clients.len() < args.connections as usize {
            eprintln!("error: connections failed during warm-up");
            return Ok(ExitCode::from(1));
        }
    }
    eprintln!(
        "sending {} message(s) on {} connection(s) to {}",
        args.messages, args.connections, args.to
    );
    let start = Instant::now();
    let (_, outcomes) = phase(clients, &template, run_id, args.warmup, args.messages).await?;
    let elapsed = start.elapsed();
    let mut histogram = new_histogram()?;
    let (mut accepted, mut not_accepted, mut errors) = (0, 0, 0);
    let mut problems = Vec::new();
    for o in outcomes {
        histogram
            .add(&o.histogram)
            .context("cannot merge latency histograms")?;
        accepted += o.accepted;
        not_accepted += o.not_accepted;
        errors += o.errors;
        problems.extend(o.problems);
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    let done = accepted + not_accepted;
    let report = Report {
        connections: args.connections,
        messages: args.messages,
        warmup: args.warmup,
        elapsed_secs: elapsed.as_secs_f64(),
        msgs_per_sec: done as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        accepted,
        not_accepted,
        errors,
    };
    for problem in problems.iter().take(10) {
        eprintln!("problem: {problem}");
    }
    println!(
        "{} message(s) acknowledged in {:.2} s over {} connection(s): {:.0} msgs/s",
        done, report.elapsed_secs, report.connections, report.msgs_per_sec
    );
    println!(
        "ACK latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms
    );
    println!(
        "AA/CA {}  other ACK codes {}  errors (no ACK) {}",
        report.accepted, report.not_accepted, report.errors
    );
    println!("{}", serde_json::to_string(&report)?);
    let all_sent = done == args.messages;
    Ok(if all_sent && not_accepted == 0 && errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sends `count` messages, numbered from `first`, over `clients`, one task
/// per client; returns the clients still usable and what each saw.
async fn phase(
    clients: Vec<MllpClient>,
    template: &Arc<Template>,
    run_id: u32,
    first: u64,
    count: u64,
) -> anyhow::Result<(Vec<MllpClient>, Vec<Outcome>)> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let numbers = Numbers {
            run_id,
            first,
            count,
            next: Arc::clone(&counter),
        };
        let histogram = new_histogram()?;
        tasks.push(tokio::spawn(drive(
            client,
            Arc::clone(template),
            numbers,
            histogram,
        )));
    }
    let mut back = Vec::new();
    let mut outcomes = Vec::new();
    for task in tasks {
        let (client, outcome) = task.await.context("a load task failed")?;
        back.extend(client);
        outcomes.push(outcome);
    }
    Ok((back, outcomes))
}

/// The message numbers of one phase, shared by its tasks.
struct Numbers {
    run_id: u32,
    first: u64,
    count: u64,
    /// The next number to take, relative to `first`.
    next: Arc<AtomicU64>,
}

/// One connection's loop: take the next message number, send, time the ACK.
async fn drive(
    mut client: MllpClient,
    template: Arc<Template>,
    numbers: Numbers,
    histogram: Histogram<u64>,
) -> (Option<MllpClient>, Outcome) {
    let mut outcome = Outcome {
        histogram,
        accepted: 0,
        not_accepted: 0,
        errors: 0,
        problems: Vec::new(),
    };
    let mut buf = Vec::with_capacity(template.len() + 32);
    loop {
        let n = numbers.next.fetch_add(1, Ordering::Relaxed);
        if n >= numbers.count {
            break;
        }
        let control_id = format!("L{:08X}{:09}", numbers.run_id, numbers.first + n);
        template.render(&control_id, numbers.first + n, &mut buf);
        let sent = Instant::now();
        match client.send(&buf).await {
            Ok(ack) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                outcome.histogram.saturating_record(micros.max(1));
                match read_ack(&ack) {
                    Ok(info) if info.is_accept() && info.control_id == control_id => {
                        outcome.accepted += 1;
                    }
                    Ok(info) => {
                        outcome.not_accepted += 1;
                        if outcome.problems.len() < 10 {
                            outcome.problems.push(format!(
                                "{control_id}: ACK {} for {}{}",
                                info.code,
                                info.control_id,
                                info.text.map(|t| format!(": {t}")).unwrap_or_default()
                            ));
                        }
                    }
                    Err(err) => {
                        outcome.not_accepted += 1;
                        if outcome.problems.len() < 10 {
                            outcome.problems.push(format!("{control_id}: {err}"));
                        }
                    }
                }
            }
            Err(err) => {
                // The connection is unusable; this task stops.
                outcome.errors += 1;
                outcome.problems.push(format!("{control_id}: {err}"));
                return (None, outcome);
            }
        }
    }
    (Some(client), outcome)
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("cannot create a latency histogram")
}

/// The template message split around its MSH-10 (and, with `--patients`,
/// around its PID-3).
#[derive(Debug)]
struct Template {
    before: Vec<u8>,
    after: Vec<u8>,
    /// With `--patients`: how many, and where PID-3 is in `after`.
    patients: Option<(u64, (usize, usize))>,
}

impl Template {
    fn new(message: &[u8], patients: Option<u64>) -> anyhow::Result<Self> {
        let (start, end) = msh10_span(message)
            .context("the template message has no MSH segment with at least 10 fields")?;
        // every message's ACK is waited for and timed: a template that asks
        // for none (or for one only on error or on success) measures nothing
        if AckExpected::of(message) != AckExpected::Always {
            anyhow::bail!(
                "the template's MSH-15 asks for an accept ACK only sometimes or never \
                 (ER, SU or NE), and load times every ACK: leave MSH-15 empty or set it to AL"
            );
        }
        let after = message[end..].to_vec();
        let patients = match patients {
            None => None,
            Some(n) => Some((
                n,
                pid3_span(&after, message[3])
                    .context("--patients needs a PID segment with a PID-3 in the template")?,
            )),
        };
        Ok(Template {
            before: message[..start].to_vec(),
            after,
            patients,
        })
    }

    fn len(&self) -> usize {
        self.before.len() + self.after.len()
    }

    /// Message number `n` with `control_id` (and its patient, with `--patients`).
    fn render(&self, control_id: &str, n: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.before);
        out.extend_from_slice(control_id.as_bytes());
        match self.patients {
            None => out.extend_from_slice(&self.after),
            Some((count, (start, end))) => {
                out.extend_from_slice(&self.after[..start]);
                let mrn = format!("LOADP{:07}^^^LOAD^MR", n % count);
                out.extend_from_slice(mrn.as_bytes());
                out.extend_from_slice(&self.after[end..]);
            }
        }
    }
}

/// Byte range of the first PID segment's field 3 in `text`.
fn pid3_span(text: &[u8], sep: u8) -> Option<(usize, usize)> {
    let mut at = 0;
    let start = loop {
        let rest = text.get(at..)?;
        let i = rest
            .windows(4)
            .position(|w| (w[0] == b'\r' || w[0] == b'\n') && &w[1..] == b"PID")?;
        let seg = at + i + 1;
        if text.get(seg + 3) == Some(&sep) {
            break seg;
        }
        at = seg;
    };
    let end = text[start..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(text.len(), |i| start + i);
    let mut seen = 0;
    let mut field = None;
    for (i, &b) in text[start..end].iter().enumerate() {
        if b == sep {
            seen += 1;
            if seen == 3 {
                field = Some(start + i + 1);
            } else if seen == 4 {
                return field.map(|f| (f, start + i));
            }
        }
    }
    field.map(|f| (f, end))
}

/// Byte range of MSH-10 in the first segment (which must be MSH).
fn msh10_span(message: &[u8]) -> Option<(usize, usize)> {
    if !message.starts_with(b"MSH") {
        return None;
    }
    let sep = *message.get(3)?;
    let segment_end = message
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(message.len());
    // MSH-1 is the separator itself, so MSH-10 follows the 9th separator.
    let mut seen = 0;
    let mut start = None;
    for (i, &b) in message[..segment_end].iter().enumerate() {
        if b == sep {
            seen += 1;
            if seen == 9 {
                start = Some(i + 1);
            } else if seen == 10 {
                return start.map(|s| (s, i));
            }
        }
    }
    start.map(|s| (s, segment_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_control_id() {
        let t = Template::new(DEFAULT_TEMPLATE.as_bytes(), None).unwrap();
        let mut out = Vec::new();
        t.render("NEW1", 7, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "MSH|^~\\&|PAS|RAL|JUNCTION|NCRS|20260315093000||ADT^A01^ADT_A01|NEW1|P|2.4|"
        ));
        assert_eq!(
            text.len(),
            DEFAULT_TEMPLATE.len() - "LOAD0000000001".len() + 4
        );
        assert_eq!(
            crate::cli::send::control_id(text.as_bytes()).as_deref(),
            Some("NEW1")
        );
    }

    #[test]
    fn msh10_at_the_end_of_the_segment_and_missing() {
        assert_eq!(
            msh10_span(b"MSH|^~\\&|a|b|c|d|e|f|g|ID\rPID|1"),
            Some((23, 25))
        );
        assert_eq!(msh10_span(b"MSH|^~\\&|a|b|c|d|e|f|g|"), Some((23, 23)));
        assert_eq!(msh10_span(b"MSH|^~\\&|a|b\r"), None);
        assert_eq!(msh10_span(b"PID|1"), None);
        assert_eq!(msh10_span(b"MSH"), None);
        assert!(Template::new(b"EVN|A01", None).is_err());
    }

    #[test]
    fn a_template_that_asks_for_no_ack_every_time_is_refused() {
        let msh =
            |msh15: &str| format!("MSH|^~\\&|P|F|J|L|2026||ADT^A01|C1|P|2.5|||{msh15}|AL\rPID|1\r");
        for ok in ["", "AL"] {
            assert!(Template::new(msh(ok).as_bytes(), None).is_ok(), "{ok:?}");
        }
        for refused in ["NE", "ER", "SU"] {
            let err = Template::new(msh(refused).as_bytes(), None).unwrap_err();
            assert!(err.to_string().contains("MSH-15"), "{refused}: {err}");
        }
    }

    #[test]
    fn patients_rewrite_pid_3_in_turn() {
        let t = Template::new(DEFAULT_TEMPLATE.as_bytes(), Some(3)).unwrap();
        let mut out = Vec::new();
        for (n, mrn) in [
            (0, "LOADP0000000"),
            (4, "LOADP0000001"),
            (5, "LOADP0000002"),
        ] {
            t.render("C1", n, &mut out);
            let text = String::from_utf8(out.clone()).unwrap();
            let pid = text.split('\r').find(|s| s.starts_with("PID|")).unwrap();
            assert!(
                pid.starts_with(&format!("PID|1||{mrn}^^^LOAD^MR||TESTPATIENT^ALEX")),
                "{pid}"
            );
        }
        // LF endings, PID-3 last in its segment
        let lf = b"MSH|^~\\&|a|b|c|d|e|f|ADT^A01|X|P|2.4\nPID|1||OLD\nPV1|1";
        let t = Template::new(lf, Some(2)).unwrap();
        t.render("C2", 1, &mut out);
        assert!(String::from_utf8(out.clone())
            .unwrap()
            .contains("\nPID|1||LOADP0000001^^^LOAD^MR\nPV1|1"));
        // no PID (a "PIDX" segment is not one)
        assert!(Template::new(b"MSH|^~\\&|a|b|c|d|e|f|g|X\rPIDX|1||A", Some(2)).is_err());
    }

    #[test]
    fn default_template_nhs_number_has_a_valid_check_digit() {
        let digits: Vec<u32> = "9434765919"
            .chars()
            .filter_map(|c| c.to_digit(10))
            .collect();
        let sum: u32 = digits[..9]
            .iter()
            .zip((2..=10).rev())
            .map(|(d, w)| d * w)
            .sum();
        assert_eq!((11 - sum % 11) % 11, digits[9]);
    }
}
