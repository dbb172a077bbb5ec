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

/// What is at a path a topology names as a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowFile {
    /// Nothing, in a folder that exists: the monarch may create the window there.
    Absent,
    /// Nothing, and the folder it would go in does not exist either.
    FolderMissing,
    /// A window (its header says so), left by an earlier run, or a PCI BAR in sysfs: the
    /// monarch may use it.
    Window,
    /// Something else, which the monarch must not overwrite: what it is.
    NotAWindow(&'static str),
}

/// The facts of the machine a topology is resolved on.
pub trait Environment {
    /// The length of `path` when it is a regular, non-empty file.
    fn image_file(&self, path: &Path) -> Result<u64, ImageFileProblem>;
    /// Whether `path` is a regular file.
    fn is_file(&self, path: &Path) -> bool;
    /// Whether anything is at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a folder.
    fn is_dir(&self, path: &Path) -> bool;
    /// Where VM artifacts live when the topology names no `vm_dir`.
    fn vm_dir(&self) -> PathBuf;
    /// What is at `path`, named as a window with `data_size` bytes of data area.
    fn window_file(&self, path: &Path, data_size: u64) -> WindowFile;
    /// The length of the demo payload program (`builtin:payload` is it, padded), if known.
    fn payload_program_len(&self) -> Option<u64>;
    /// The contents of a small file (a key, a signature): at most `max + 1` bytes of it.
    fn read_small(&self, path: &Path, max: usize) -> std::io::Result<Vec<u8>>;
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

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn vm_dir(&self) -> PathBuf {
        crate::vm::artifacts::default_dir()
    }

    fn payload_program_len(&self) -> Option<u64> {
        std::fs::metadata(crate::builtin::payload_program())
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
    }

    fn read_small(&self, path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
        crate::signing::read_small(path, max)
    }

    fn window_file(&self, path: &Path, data_size: u64) -> WindowFile {
        let len = monarch_proto::window::layout::window_len(data_size).unwrap_or(0);
        match monarch_drivers::window::existing(path, len) {
            monarch_drivers::window::Existing::Nothing => {
                match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) if !dir.is_dir() => WindowFile::FolderMissing,
                    _ => WindowFile::Absent,
                }
            }
            monarch_drivers::window::Existing::Window | monarch_drivers::window::Existing::Device => {
                WindowFile::Window
            }
            monarch_drivers::window::Existing::Other(what) => WindowFile::NotAWindow(what),
        }
    }
}
