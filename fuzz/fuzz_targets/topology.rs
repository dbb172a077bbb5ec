//! A topology file that may hold anything: resolving it never panics, on a machine that is
//! not there (every fact comes from this fake environment, so nothing on the fuzzing host
//! is read). Every problem found names a line inside the file; a topology that resolves
//! has a monarch and unique ids, its dependencies name other secondaries, and its plan's
//! dependency levels hold every secondary once, each above all it depends on.
#![no_main]
use monarch_boot::topology::{Environment, ImageFileProblem, Topology, TopologyError, WindowFile};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A machine with one image file, one trusted key (`ops.pub`), an old window, and a missing
/// folder.
struct Nowhere;

impl Environment for Nowhere {
    fn image_file(&self, path: &Path) -> Result<u64, ImageFileProblem> {
        if path.ends_with("os.img") { Ok(8 << 20) } else { Err(ImageFileProblem::EmptyOrNotRegular) }
    }
    fn is_file(&self, path: &Path) -> bool {
        path.ends_with("os.img")
    }
    fn exists(&self, path: &Path) -> bool {
        path.ends_with("os.img") || path.ends_with("old.win")
    }
    fn is_dir(&self, path: &Path) -> bool {
        path == Path::new("/") || path == Path::new("/base")
    }
    fn vm_dir(&self) -> PathBuf {
        "/nowhere/vm".into()
    }
    fn window_file(&self, path: &Path, _: u64) -> WindowFile {
        if path.ends_with("old.win") {
            WindowFile::Window
        } else if path.ends_with("os.img") {
            WindowFile::NotAWindow("a regular file")
        } else if path.starts_with("/missing") {
            WindowFile::FolderMissing
        } else {
            WindowFile::Absent
        }
    }
    fn payload_program_len(&self) -> Option<u64> {
        Some(3 << 20)
    }
    fn read_small(&self, path: &Path, _: usize) -> std::io::Result<Vec<u8>> {
        if path.ends_with("ops.pub") {
            Ok(b"monarch-pub v1 ed25519 329e322193bcb6f940c350739e2bbff429ad32af47429cb6c61f917f61638f5e\n".to_vec())
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    match Topology::parse_in(src, Path::new("/base/t.toml"), Path::new("/base"), &Nowhere) {
        Ok(t) => {
            assert!(!t.managers.is_empty(), "resolved without a monarch");
            let mut ids = HashSet::new();
            for id in t.managers.iter().map(|m| &m.id).chain(t.secondaries.iter().map(|s| &s.id)) {
                assert!(ids.insert(id.clone()), "duplicate id {id}");
            }
            let plan = monarch_boot::plan::Plan::new(t);
            let secs = &plan.topology.secondaries;
            let mut level = vec![usize::MAX; secs.len()];
            for (n, l) in plan.levels().iter().enumerate() {
                for &i in l {
                    assert_eq!(level[i], usize::MAX, "{} on two levels", secs[i].id);
                    level[i] = n;
                }
            }
            for (i, s) in secs.iter().enumerate() {
                assert_ne!(level[i], usize::MAX, "{} on no level", s.id);
                for d in s.life.depends_on() {
                    let j = secs.iter().position(|x| x.id == d);
                    let j = j.unwrap_or_else(|| panic!("{} depends on {d}, not a secondary", s.id));
                    assert!(level[j] < level[i], "{} is not above {d}", s.id);
                }
            }
        }
        Err(e) => {
            let lines = src.lines().count().max(1) + 1;
            if let TopologyError::Invalid { problems, .. } = &e {
                assert!(!problems.is_empty(), "an error without a problem");
                for p in problems {
                    assert!(p.line.is_none_or(|l| l >= 1 && l <= lines), "line {:?} of {lines}", p.line);
                }
            }
            let _ = e.to_string();
        }
    }
});
