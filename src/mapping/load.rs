//! Reading mapping files from a folder. The only file I/O of the mapping module;
//! compiling stays pure ([`super::compile`]).

use std::path::{Path, PathBuf};

use super::{compile, MappingError, MappingSet};

/// Loads every `*.toml` in `dir`, sorted by file name; all problems of all files
/// are returned together. Two files declaring the same mapping name is an error.
pub(crate) fn load_dir(dir: &Path) -> Result<MappingSet, Vec<MappingError>> {
    let io_error = |file: PathBuf, message: String| MappingError {
        file,
        line: 1,
        col: 1,
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![io_error(
                dir.to_path_buf(),
                format!("cannot read mapping folder: {e}"),
            )])
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut errors = Vec::new();
    let mut plans = Vec::new();
    for file in files {
        let source = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                errors.push(io_error(file, format!("cannot read mapping file: {e}")));
                continue;
            }
        };
        match compile(&file, &source) {
            Ok(plan) => {
                if let Some(first) = plans
                    .iter()
                    .find(|p: &&super::Plan| p.name() == plan.name())
                {
                    // at this file's `name =` (the file stem when it has none)
                    let (line, col) = source
                        .lines()
                        .enumerate()
                        .find_map(|(i, l)| {
                            let t = l.trim_start();
                            let is_name = t
                                .strip_prefix("name")
                                .is_some_and(|r| r.trim_start().starts_with('='));
                            is_name.then(|| (i + 1, l.len() - t.len() + 1))
                        })
                        .unwrap_or((1, 1));
                    errors.push(MappingError {
                        file,
                        line,
                        col,
                        message: format!(
                            "mapping name `{}` is already used by {}, expected unique names",
                            plan.name(),
                            first.file().display()
                        ),
                    });
                } else {
                    plans.push(plan);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(MappingSet::from_plans(plans))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn parse_file(path: &Path) -> String {
        let bytes = std::fs::read(path).unwrap();
        crate::hl7::decode(&bytes).unwrap()
    }

    /// Every shipped mapping compiles, and every `[[test]]` case in it passes.
    #[test]
    fn shipped_mappings_pass_their_tests() {
        let set = match load_dir(&repo().join("mappings")) {
            Ok(s) => s,
            Err(errors) => {
                let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                panic!("shipped mappings do not compile:\n{}", all.join("\n"));
            }
        };
        let mut cases = 0;
        let mut failures = Vec::new();
        for plan in set.plans() {
            for case in plan.tests() {
                cases += 1;
                let text = parse_file(&case.message);
                let message = crate::hl7::Message::parse(&text).unwrap();
                let out = match plan.apply(&message) {
                    Ok(o) => o,
                    Err(e) => {
                        failures.push(format!("{} / {}: {e}", plan.name(), case.name));
                        continue;
                    }
                };
                let document = out.value();
                for frag in &case.expect {
                    if !super::super::contains_fragment(&document, frag) {
                        failures.push(format!(
                            "{} / {}: missing {frag}\nin {}",
                            plan.name(),
                            case.name,
                            serde_json::to_string_pretty(&out.document).unwrap()
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        assert!(cases > 0, "no [[test]] cases found");
    }
}
