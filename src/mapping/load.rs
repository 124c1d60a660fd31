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
                if plans.iter().any(|p: &super::Plan| p.name() == plan.name()) {
                    errors.push(io_error(
                        file,
                        format!(
                            "mapping name `{}` is already used by another file, expected unique names",
                            plan.name()
                        ),
                    ));
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
