//! What resolving a topology asks of the machine it runs on, apart from parsing: whether an
//! image file is there and how long it is, whether a VM's kernel and a machine's disk exist,
//! and where VM artifacts live by default. [`Host`] asks this machine; a test can answer
//! for a machine that is not there.
use std::path::{Path, PathBuf};

/// Why a file named as an image cannot be one.
#[derive(Debug)]
pub enum ImageFileProblem {
    /// It is empty, or not a regular file.
    EmptyOrNotRegular,
    /// It cannot be read.
    Unreadable(std::io::Error),
}

/// The facts of the machine a topology is resolved on.
pub trait Environment {
    /// The length of `path` when it is a regular, non-empty file.
    fn image_file(&self, path: &Path) -> Result<u64, ImageFileProblem>;
    /// Whether `path` is a regular file.
    fn is_file(&self, path: &Path) -> bool;
    /// Whether anything is at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Where VM artifacts live when the topology names no `vm_dir`.
    fn vm_dir(&self) -> PathBuf;
}

/// This machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

impl Environment for Host {
    fn image_file(&self, path: &Path) -> Result<u64, ImageFileProblem> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() > 0 => Ok(m.len()),
            Ok(_) => Err(ImageFileProblem::EmptyOrNotRegular),
            Err(e) => Err(ImageFileProblem::Unreadable(e)),
        }
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn vm_dir(&self) -> PathBuf {
        crate::vm::artifacts::default_dir()
    }
}
