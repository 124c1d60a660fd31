//! `junction parse FILE`: prints the message(s) in an HL7 file as a tree.
//!
//! The file is decoded with [`crate::hl7::decode`] (MSH-18, BOM, line endings)
//! and batches are split. Each segment is printed with its occurrence
//! (`OBX[2]`), each non-empty field as `PID-5  DOE^JOHN`, and fields with
//! repetitions, components or subcomponents are broken down underneath with
//! the path of each part (`PID-3[2].1  9449305552`), so every printed path can
//! be used as is in a mapping. Values are escape-decoded.
//!
//! This prints patient data to stdout: it is a tool for looking at a file the
//! user already has, never a log.
//!
//! Exit: 0 when every message parsed; 1 when one did not (the typed error on
//! stderr, the other messages still printed); 2 when the file cannot be read.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::hl7::{Element, Message, Separators};

#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// The HL7 file to parse (one message, a batch, or concatenated messages).
    pub file: PathBuf,
}

pub fn run(args: ParseArgs) -> anyhow::Result<ExitCode> {
    let raw = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.file.display();
    // each message of a batch decoded by its own MSH-18, as the listener does
    let messages = match super::map::decode_messages(&raw) {
        Ok(messages) => messages,
        Err(err) => {
            eprintln!("error: {name}: {err}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut failed = false;
    let mut out = String::new();
    for (i, text) in messages.iter().enumerate() {
        if messages.len() > 1 {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "# message {} of {}", i + 1, messages.len());
        }
        match Message::parse(text) {
            Ok(message) => render(&message, &mut out),
            Err(err) => {
                failed = true;
                eprintln!("error: {name}: message {}: {err}", i + 1);
            }
        }
    }
    print!("{out}");
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Appends the tree of `message` to `out`.
pub fn render(message: &Message<'_>, out: &mut String) {
    let seps = message.separators();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for segment in message.segments() {
        let occurrence = seen.entry(segment.name()).or_insert(0);
        *occurrence += 1;
        let name = if *occurrence == 1 {
            segment.name().to_owned()
        } else {
            format!("{}[{}]", segment.name(), occurrence)
        };
        let _ = writeln!(out, "{name}");
        for (i, field) in segment.fields().enumerate() {
            let number = i + 1;
            let path = format!("{name}-{number}");
            if segment.name() == "MSH" && number <= 2 {
                let value = if number == 1 {
                    seps.field.to_string()
                } else {
                    message.encoding_characters().to_owned()
                };
                line(out, 1, &path, &value);
                continue;
            }
            render_field(out, &path, field, seps);
        }
    }
}

fn render_field(out: &mut String, path: &str, field: Element<'_>, seps: &Separators) {
    if field.raw().is_empty() {
        return;
    }
    line(out, 1, path, &field.text(seps));
    let repeated = field.len() > 1;
    for (r, repeat) in field.parts().enumerate() {
        if repeat.raw().is_empty() {
            continue;
        }
        let repeat_path = if repeated {
            format!("{path}[{}]", r + 1)
        } else {
            path.to_owned()
        };
        let mut depth = 2;
        if repeated {
            line(out, depth, &repeat_path, &repeat.text(seps));
            depth += 1;
        }
        if repeat.len() == 1 && repeat.part(1).is_some_and(|c| c.len() == 1) {
            continue;
        }
        for (c, component) in repeat.parts().enumerate() {
            if component.raw().is_empty() {
                continue;
            }
            let component_path = format!("{repeat_path}.{}", c + 1);
            line(out, depth, &component_path, &component.text(seps));
            if component.len() < 2 {
                continue;
            }
            for (s, sub) in component.parts().enumerate() {
                if sub.raw().is_empty() {
                    continue;
                }
                let sub_path = format!("{component_path}.{}", s + 1);
                line(out, depth + 1, &sub_path, &sub.text(seps));
            }
        }
    }
}

fn line(out: &mut String, depth: usize, path: &str, value: &str) {
    let indent = "  ".repeat(depth);
    // Keep one line per value: show embedded line breaks escaped.
    let value = value.replace('\r', "\\r").replace('\n', "\\n");
    let _ = writeln!(out, "{indent}{path:<12}  {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let text = crate::hl7::decode(input.as_bytes()).expect("decodes");
        let message = Message::parse(&text).expect("parses");
        let mut out = String::new();
        render(&message, &mut out);
        assert_eq!(out, expected);
    }

    fn exit_code(content: &[u8]) -> ExitCode {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.hl7");
        std::fs::write(&file, content).expect("write");
        run(ParseArgs { file }).expect("runs")
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(b"MSH|^~\\&|A|B\rPID|1\r"), ExitCode::SUCCESS);
        assert_eq!(exit_code(b"PID|1\r"), ExitCode::from(1));
        assert_eq!(
            exit_code(b"MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\rPIDX|1\r"),
            ExitCode::from(1)
        );
        assert!(run(ParseArgs {
            file: PathBuf::from("/nonexistent/junction/m.hl7")
        })
        .is_err());
    }

    #[test]
    fn tree() {
        check(
            "MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|C1|P|2.4\nPID|1||123^^^RAL^MR~999^^^NHS&x&y^NH||DOE^JOHN\nOBX|1\nOBX|2|TX|||a\\.br\\b\n",
            "\
MSH
  MSH-1         |
  MSH-2         ^~\\&
  MSH-3         PAS
  MSH-4         RAL
  MSH-7         20240501
  MSH-9         ADT^A01
    MSH-9.1       ADT
    MSH-9.2       A01
  MSH-10        C1
  MSH-11        P
  MSH-12        2.4
PID
  PID-1         1
  PID-3         123^^^RAL^MR~999^^^NHS&x&y^NH
    PID-3[1]      123^^^RAL^MR
      PID-3[1].1    123
      PID-3[1].4    RAL
      PID-3[1].5    MR
    PID-3[2]      999^^^NHS&x&y^NH
      PID-3[2].1    999
      PID-3[2].4    NHS&x&y
        PID-3[2].4.1  NHS
        PID-3[2].4.2  x
        PID-3[2].4.3  y
      PID-3[2].5    NH
  PID-5         DOE^JOHN
    PID-5.1       DOE
    PID-5.2       JOHN
OBX
  OBX-1         1
OBX[2]
  OBX[2]-1      2
  OBX[2]-2      TX
  OBX[2]-5      a\\nb
",
        );
    }
}
