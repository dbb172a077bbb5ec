//! The run folder a boot keeps its windows, logs and pid files in, when the topology names
//! none: `/dev/shm/monarch-NAME-PID`, created for the run and removed after it.
//!
//! A monarch killed before it could clean up leaves its folder behind, and the next run
//! removes it — but only a folder it can prove is such a leftover. A name that looks like
//! ours proves nothing (a user's folder, or the live run of a monarch in another pid
//! namespace sharing `/dev/shm`), so every run folder carries an ownership marker written
//! when it is created: the owner's pid, when that process started, the boot and the pid
//! namespace. A folder is abandoned only if its marker parses, it belongs to this user, and
//! its owner is provably gone: another boot, or in this pid namespace a pid that is dead or
//! now names a process that started at another time. Anything else is left alone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The marker's file name inside a run folder.
pub const MARKER: &str = ".monarch-run";

/// The first line of a marker (its format's version).
const MAGIC: &str = "monarch run folder v1";

/// A marker larger than this is not one of ours.
const MARKER_MAX: u64 = 4096;

/// Who created a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The creating process.
    pub pid: u32,
    /// When it started, in clock ticks after boot (with the pid, one process for the boot).
    pub start: u64,
    /// The boot it ran in.
    pub boot_id: String,
    /// Its pid namespace (`pid:[INODE]`).
    pub pid_ns: String,
}

impl Owner {
    /// This process, if the kernel tells all four facts.
    pub fn me() -> Option<Owner> {
        use monarch_drivers::host;
        let pid = std::process::id();
        Some(Owner {
            pid,
            start: host::start_ticks(pid)?,
            boot_id: host::boot_id()?,
            pid_ns: host::pid_namespace()?,
        })
    }

    /// The marker's text.
    pub fn render(&self) -> String {
        format!(
            "{MAGIC}\npid {}\nstart {}\nboot {}\npidns {}\n",
            self.pid, self.start, self.boot_id, self.pid_ns
        )
    }

    /// A marker's text, strictly: the magic line and the four fields in order, nothing else.
    pub fn parse(text: &str) -> Option<Owner> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| -> Option<String> {
            let v = lines.next()?.strip_prefix(name)?.strip_prefix(' ')?;
            (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_string())
        };
        let owner = Owner {
            pid: field("pid")?.parse().ok()?,
            start: field("start")?.parse().ok()?,
            boot_id: field("boot")?,
            pid_ns: field("pidns")?,
        };
        lines.next().is_none().then_some(owner)
    }

    /// Whether this owner is provably gone, judged from `here` (this process).
    pub fn is_gone(&self, here: &Owner) -> bool {
        if self.boot_id != here.boot_id {
            return true; // no process outlives its boot
        }
        if self.pid_ns != here.pid_ns {
            return false; // its pids are not ours to look up
        }
        monarch_drivers::host::start_ticks(self.pid) != Some(self.start)
            || !monarch_drivers::host::alive(self.pid)
    }
}

/// Why a temporary run folder could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RunFolderError {
    /// This process's own ownership marker could not be made.
    #[error(
        "cannot tell this process's start time, boot id or pid namespace from /proc: is /proc mounted? \
         (or name a run folder with chassis.run_dir)"
    )]
    NoOwner,
    /// The folder is there and nothing proves its owner gone.
    #[error(
        "cannot create the run folder {}: it exists and was not left by a monarch known to be gone \
         (another pid namespace's run, or not monarch's); remove it if it is yours, or name a run \
         folder with chassis.run_dir",
        .0.display()
    )]
    Exists(PathBuf),
    /// The folder could not be made.
    #[error("cannot create the run folder {}: {source}; or name a run folder with chassis.run_dir", .path.display())]
    Create {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ownership marker could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Create the temporary run folder `dir` (mode 0700, its parent must exist) with this
/// process's marker, after removing the abandoned run folders beside it.
pub fn create(dir: &Path) -> Result<(), RunFolderError> {
    let me = Owner::me().ok_or(RunFolderError::NoOwner)?;
    if let Some(parent) = dir.parent() {
        remove_abandoned(parent, &me);
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            RunFolderError::Exists(dir.to_path_buf())
        } else {
            RunFolderError::Create { path: dir.to_path_buf(), source: e }
        }
    })?;
    let marker = dir.join(MARKER);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .and_then(|mut f| std::io::Write::write_all(&mut f, me.render().as_bytes()))
        .map_err(|e| RunFolderError::Marker { path: marker, source: e })
}

/// Remove the run folders in `parent` that a monarch now gone left behind (see the module's
/// documentation for what proves it), stopping the VMs they started. Returns what was removed.
pub fn remove_abandoned(parent: &Path, here: &Owner) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return removed };
    let uid = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.starts_with("monarch-")) {
            continue;
        }
        let dir = e.path();
        // Not through a symlink, only this user's, and only one nobody else could have
        // written a marker into (run folders are made 0700).
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
            continue;
        }
        let Some(owner) = read_marker(&dir.join(MARKER), uid) else { continue };
        if !owner.is_gone(here) {
            continue;
        }
        // VMs outlive a monarch that was killed (QEMU has no parent-death signal of its own):
        // stop the ones it started, found by their pid files.
        crate::vm::qemu::kill_orphans(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// The owner a marker file names, if it is a regular file of user `uid` that parses.
fn read_marker(path: &Path, uid: u32) -> Option<Owner> {
    use std::io::Read;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MARKER_MAX || meta.uid() != uid {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MARKER_MAX).read_to_string(&mut text).ok()?;
    Owner::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pid_max is at most 2^22 on Linux: this pid cannot be running.
    const DEAD: u32 = 4_194_399;

    fn folder(parent: &Path, name: &str, marker: Option<&Owner>) -> PathBuf {
        let d = parent.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(d.join("x.win"), b"x").unwrap();
        if let Some(o) = marker {
            std::fs::write(d.join(MARKER), o.render()).unwrap();
        }
        d
    }

    #[test]
    fn the_marker_round_trips_and_is_parsed_strictly() {
        let me = Owner::me().unwrap();
        assert_eq!(Owner::parse(&me.render()), Some(me.clone()));
        let text = me.render();
        for bad in [
            String::new(),
            text.replace("v1", "v2"),
            text.replace("pid ", "pid  "),
            text.replace("start ", "start x"),
            format!("{text}extra\n"),
            text.lines().take(4).collect::<Vec<_>>().join("\n"),
        ] {
            assert_eq!(Owner::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_folders_provably_abandoned_by_a_monarch_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let me = Owner::me().unwrap();
        let dead = folder(p, "monarch-default-1", Some(&Owner { pid: DEAD, ..me.clone() }));
        // The pid is alive (ours) but started at another time: the pid was reused.
        let reused = folder(p, "monarch-default-2", Some(&Owner { start: me.start + 1, ..me.clone() }));
        let old_boot =
            folder(p, "monarch-default-3", Some(&Owner { boot_id: "another-boot".into(), ..me.clone() }));
        // Kept: no marker (a user's folder with a name like ours), a live owner, an owner in
        // another pid namespace, a garbled marker, a folder of another name.
        let users = folder(p, &format!("monarch-default-{DEAD}"), None);
        let live = folder(p, "monarch-default-4", Some(&me));
        let other_ns = folder(
            p,
            "monarch-default-5",
            Some(&Owner { pid: DEAD, pid_ns: "pid:[1]".into(), ..me.clone() }),
        );
        let garbled = folder(p, "monarch-default-6", None);
        std::fs::write(garbled.join(MARKER), "monarch run folder v1\npid 4194399\n").unwrap();
        let other = folder(p, "not-monarch-1", Some(&Owner { pid: DEAD, ..me.clone() }));
        // A folder others may write into: its marker proves nothing.
        let open = folder(p, "monarch-default-8", Some(&Owner { pid: DEAD, ..me.clone() }));
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let mut removed = remove_abandoned(p, &me);
        removed.sort();
        assert_eq!(removed, vec![dead.clone(), reused.clone(), old_boot.clone()]);
        for d in [&users, &live, &other_ns, &garbled, &other, &open] {
            assert!(d.join("x.win").exists(), "{} was removed", d.display());
        }
    }

    #[test]
    fn a_symlink_named_like_a_run_folder_is_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let me = Owner::me().unwrap();
        std::fs::write(target.path().join(MARKER), Owner { pid: DEAD, ..me.clone() }.render()).unwrap();
        std::fs::write(target.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(target.path(), parent.path().join("monarch-default-7")).unwrap();
        assert!(remove_abandoned(parent.path(), &me).is_empty());
        assert!(target.path().join("keep").exists());
    }

    #[test]
    fn create_marks_the_folder_and_refuses_one_that_is_not_provably_abandoned() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("monarch-x-1");
        create(&dir).unwrap();
        assert_eq!(read_marker(&dir.join(MARKER), rustix::process::geteuid().as_raw()), Owner::me());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // Ours and alive: not removed, and not created twice.
        let e = create(&dir).unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("run_dir"), "{e}");
        assert!(dir.join(MARKER).exists());
    }
}
