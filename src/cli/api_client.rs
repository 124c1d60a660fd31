//! The small HTTP client the operations subcommands (`messages`, `queues`,
//! `dead-letters`, `retry`, `replay`) use to talk to a running engine's API.
//!
//! It does not retry: an operation either reaches the engine or reports why
//! not. Answers are JSON; a non-2xx answer is returned with its status so the
//! command can print the engine's `{"error": ...}` text and exit 1.
//!
//! When the environment variable [`TOKEN_ENV`] is set, its value is sent as
//! `Authorization: Bearer …` (an `ops` token from `junction token add`): an
//! API bound beyond loopback refuses operations without one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use serde_json::Value;

/// The environment variable holding an API token for the operations
/// subcommands and `junction tail` (never a command-line argument, which
/// other users could read in the process list).
pub const TOKEN_ENV: &str = "JUNCTION_API_TOKEN";

/// The token in [`TOKEN_ENV`], when set and not empty.
pub fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long an operation (a `POST`: a retry or replay, which maps every
/// document it queues) may take. The engine finishes it whether or not the
/// CLI is still waiting.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the engine's API is when `--api` is not given.
pub const API_ENV: &str = "JUNCTION_API";

/// The engine's API: `--api` when given, else `JUNCTION_API`, else the
/// `[api] bind` of `./junction.toml` (what `junction serve` in the same folder
/// listens on; a wildcard bind is reached on loopback), else
/// `http://127.0.0.1:8080`, the default config's.
pub fn resolve_api(given: Option<&str>) -> String {
    if let Some(url) = given {
        return url.to_string();
    }
    if let Some(url) = std::env::var(API_ENV).ok().filter(|u| !u.trim().is_empty()) {
        return url;
    }
    let file = std::path::Path::new("junction.toml");
    config_api(file).unwrap_or_else(|| {
        let unreadable = file.exists()
            && std::fs::read_to_string(file)
                .ok()
                .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
                .is_none();
        if unreadable {
            eprintln!(
                "note: ./junction.toml cannot be read (see `junction check`); trying http://127.0.0.1:8080 (give --api or JUNCTION_API)"
            );
        }
        "http://127.0.0.1:8080".to_string()
    })
}

/// `http://<[api] bind>` of a config file, if it has a readable one.
fn config_api(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let bind = table.get("api")?.get("bind")?.as_str()?;
    let addr: std::net::SocketAddr = bind.parse().ok()?;
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Some(format!("http://{host}:{}", addr.port()))
}

/// The `--api` argument every operations subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the engine's HTTP API [default: $JUNCTION_API, else the
    /// `[api] bind` of ./junction.toml, else http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Print the engine's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// An answer: the HTTP status and the JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl ApiArgs {
    /// The API's base URL ([`resolve_api`]).
    pub fn url(&self) -> String {
        resolve_api(self.api.as_deref())
    }
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// What every operations subcommand does first: an error answer is
    /// printed and ends the command: exit 2 when the request could not be
    /// made as asked (400 a bad argument, 401/403 no or the wrong token: the
    /// command could not run, as `tail` says too), exit 1 when the engine
    /// answered about the thing asked for (404 no such message, 409 not in a
    /// state for it); with `--json` the body is printed as is and ends it
    /// (exit 0). `None`: go on and render it.
    pub fn finish_early(&self, json: bool) -> Option<ExitCode> {
        if !self.ok() {
            eprintln!("error: {}", self.error());
            let could_not_run = matches!(self.status, 400 | 401 | 403);
            return Some(ExitCode::from(if could_not_run { 2 } else { 1 }));
        }
        if json {
            println!("{}", self.body);
            return Some(ExitCode::SUCCESS);
        }
        None
    }

    /// The engine's error text for a non-2xx answer.
    pub fn error(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("the engine answered HTTP {}", self.status))
    }
}

/// Sends `method path` (with `query` pairs) to the API and reads the JSON answer.
pub fn call(
    api: &str,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<Answer> {
    let mut url = reqwest::Url::parse(api.trim_end_matches('/')).with_context(|| {
        format!("invalid --api `{api}`, expected a URL such as http://127.0.0.1:8080")
    })?;
    url.set_path(path);
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let operation = method == reqwest::Method::POST;
    let timeout = if operation {
        OPERATION_TIMEOUT
    } else {
        TIMEOUT
    };
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("cannot build the HTTP client")?;
        let mut request = client.request(method, url.clone());
        if let Some(token) = token_from_env() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| {
            let context = match operation && err.is_timeout() {
                true => format!(
                    "no answer from the engine at {url} within {} s (it goes on with the \
                     operation: see `junction queues` and `junction dead-letters`)",
                    timeout.as_secs()
                ),
                false => format!("cannot reach the engine at {url}"),
            };
            anyhow::Error::new(err).context(context)
        })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("cannot read the answer from {url}"))?;
        let body = serde_json::from_str(&text)
            .with_context(|| format!("the answer from {url} (HTTP {status}) is not JSON"))?;
        Ok(Answer { status, body })
    })
}

/// Renders rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// A JSON field as display text (`-` when missing or null), its control
/// characters escaped ([`printable`]).
pub fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) if s.is_empty() => "-".to_string(),
        Some(Value::String(s)) => printable_line(s),
        Some(other) => other.to_string(),
    }
}

/// [`printable`] for a value shown on one line (a table cell, a field): a
/// line feed or carriage return in it (a control id's `\X0A\`) is escaped
/// too, so a sender cannot start a line of its own making.
pub fn printable_line(s: &str) -> String {
    printable(s).replace('\n', "\\u{a}")
}

/// Text from a sender (a control id, an application name, a note) as it may
/// reach an operator's terminal: control characters (C0 but line feed, DEL,
/// C1) escaped as `\u{1b}`, so bytes a sender chose can neither recolour, hide
/// or rewrite lines nor set a terminal's title.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| (c.is_control() && c != '\n') || crate::telemetry::is_bidi_control(c);
    if !s.chars().any(control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if control(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_control_characters_are_escaped() {
        assert_eq!(printable("RAL20261124"), "RAL20261124");
        assert_eq!(
            printable("ESC\u{1b}[31mRED\u{7}\u{9b}"),
            "ESC\\u{1b}[31mRED\\u{7}\\u{9b}"
        );
        assert_eq!(printable("a\nb\tc"), "a\nb\\u{9}c");
        assert_eq!(printable("txt\u{202e}gpj.exe"), "txt\\u{202e}gpj.exe");
        // one line's value: a line feed cannot start another
        assert_eq!(
            printable_line("C1\n2026 INFO forged\r"),
            "C1\\u{a}2026 INFO forged\\u{d}"
        );
    }

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let got = table(
            &["ID", "DESTINATION", "ERROR"],
            &[
                vec!["1".into(), "store".into(), "-".into()],
                vec!["12".into(), "mesh_hwe".into(), "HTTP 503".into()],
            ],
        );
        assert_eq!(
            got,
            "ID  DESTINATION  ERROR\n1   store        -\n12  mesh_hwe     HTTP 503"
        );
    }

    #[test]
    fn missing_and_empty_fields_show_as_a_dash() {
        let v = serde_json::json!({"a": null, "b": "", "c": 3, "d": "x"});
        assert_eq!(text(&v, "a"), "-");
        assert_eq!(text(&v, "b"), "-");
        assert_eq!(text(&v, "c"), "3");
        assert_eq!(text(&v, "d"), "x");
        assert_eq!(text(&v, "zz"), "-");
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;

    #[test]
    fn the_api_is_found_in_the_config_beside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junction.toml");
        for (bind, url) in [
            ("127.0.0.1:18300", "http://127.0.0.1:18300"),
            ("0.0.0.0:9000", "http://127.0.0.1:9000"),
            ("[::]:9001", "http://[::1]:9001"),
            ("10.1.2.3:8081", "http://10.1.2.3:8081"),
        ] {
            std::fs::write(&file, format!("[api]\nbind = \"{bind}\"\n")).unwrap();
            assert_eq!(config_api(&file).as_deref(), Some(url), "{bind}");
        }
        std::fs::write(&file, "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n").unwrap();
        assert_eq!(config_api(&file), None);
        assert_eq!(resolve_api(Some("http://x:1")), "http://x:1");
    }
}
