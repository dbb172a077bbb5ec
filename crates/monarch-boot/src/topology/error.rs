//! What is wrong with a topology: every problem with its line and field, all reported at once.
use std::path::{Path, PathBuf};
use thiserror::Error;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field or table, e.g. `processor "lc3".switch`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A topology that cannot be used.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("topology {}: cannot read: {source}; check the path given to --topology", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{}", render(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        match p.line {
            Some(l) => s.push_str(&format!("{}:{l}: {}: {}", path.display(), p.field, p.message)),
            None => s.push_str(&format!("{}: {}: {}", path.display(), p.field, p.message)),
        }
    }
    s
}
