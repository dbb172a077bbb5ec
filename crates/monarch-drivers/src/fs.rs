//! Files replaced whole: a reader (or a crash) sees the old contents or the new, never a
//! part of either.
//!
//! The new contents are written to a temporary file in the same folder (a rename is atomic
//! only within one file system), flushed to the disk, renamed over the destination, and the
//! folder is flushed so the rename itself survives a crash. On failure the temporary file is
//! removed and the destination is untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replace `path` with `bytes`: a file of default permissions (0666 less the umask, as
/// `File::create` makes) that holds exactly `bytes`, even after a crash at any moment.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, |f| f.write_all(bytes))
}

/// Replace `path` with `bytes` in a file of permissions `mode` (set before anything is
/// written, so a secret is never readable under the default ones), atomically as
/// [`write_atomically`].
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    replace(path, |f| {
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)
    })
}

/// Replace `dest` with a copy of the file `src` (its bytes and permissions, as `fs::copy`
/// does), atomically as [`write_atomically`]. Returns the bytes copied.
pub fn copy_atomically(src: &Path, dest: &Path) -> io::Result<u64> {
    let mut from = File::open(src)?;
    let perms = from.metadata()?.permissions();
    replace(dest, |f| {
        let n = io::copy(&mut from, f)?;
        f.set_permissions(perms)?;
        Ok(n)
    })
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A temporary name beside `path`, unique to this process and this call: two threads
/// replacing the same file never share a temporary file.
fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{}.tmp-{}-{call}", name.to_string_lossy(), std::process::id());
    Ok(folder_of(path).join(tmp))
}

/// Write a temporary file with `fill`, flush it, rename it over `path`, flush the folder.
fn replace<T>(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
    let tmp = temp_beside(path)?;
    // create_new: never truncate a file that is not ours (a stale temporary of a dead
    // process with a recycled pid is an error, not a victim).
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = (|| {
        let out = fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        Ok(out)
    })();
    let out = match written {
        Ok(out) => out,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename is done (the temporary is gone); a failure here means only that it may not
    // survive a crash yet.
    File::open(folder_of(path))?.sync_all()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["leases"]);
    }

    #[test]
    fn a_failed_write_leaves_the_folder_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomically(&dir.path().join("missing/leases"), b"x").is_err());
        // The rename fails (a folder that is not empty cannot be replaced by a file): the
        // temporary, written and flushed by then, is removed.
        let busy = dir.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("inside"), b"keep").unwrap();
        assert!(write_atomically(&busy, b"x").is_err());
        assert_eq!(names(dir.path()), ["busy"]);
        assert_eq!(fs::read(busy.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn a_path_that_names_no_file_is_refused() {
        let e = write_atomically(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("names no file"), "{e}");
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("leases")), Path::new("."));
        assert_eq!(folder_of(Path::new("/var/lib/leases")), Path::new("/var/lib"));
        let tmp = temp_beside(Path::new("leases")).unwrap();
        assert_eq!(tmp.parent(), Some(Path::new(".")));
        assert_ne!(tmp, temp_beside(Path::new("leases")).unwrap(), "one temporary per call");
    }

    #[test]
    fn a_copy_brings_bytes_and_permissions_and_replaces_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("image"), dir.path().join("images-image"));
        let bytes: Vec<u8> = (0..300_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
        fs::write(&src, &bytes).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(&dest, b"old").unwrap();
        assert_eq!(copy_atomically(&src, &dest).unwrap(), bytes.len() as u64);
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(names(dir.path()), ["image", "images-image"]);
        assert!(copy_atomically(&dir.path().join("none"), &dest).is_err());
        assert_eq!(fs::read(&dest).unwrap(), bytes, "a failed copy leaves the destination alone");
        assert_eq!(names(dir.path()), ["image", "images-image"]);
    }

    #[test]
    fn concurrent_writers_of_one_file_each_replace_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 64 << 10]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..10 {
                        write_atomically(p, c).unwrap();
                    }
                });
            }
        });
        assert!(contents.contains(&fs::read(&p).unwrap()));
        assert_eq!(names(dir.path()), ["shared"]);
    }
}
