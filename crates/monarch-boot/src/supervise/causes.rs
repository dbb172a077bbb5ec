//! Reboot causes: why each secondary went down, kept across runs in the state folder (like
//! SONiC's `show reboot-cause history`), as one JSON object per line in
//! `reboot-causes.jsonl`.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The file in the state folder.
pub const FILE: &str = "reboot-causes.jsonl";
/// Records kept per secondary (older ones are dropped when the file is compacted).
pub const KEEP: usize = 100;

/// Why a secondary went down, and what the supervisor did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The secondary.
    pub id: String,
    /// What happened (`its image was killed by SIGKILL`, `reboot requested by the operator`).
    pub cause: String,
    /// What the supervisor did (`restarted`, `failed: restart limit reached`, `shut down`).
    pub action: String,
}

/// Why the state folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "state folder {path}: {source}; give a folder monarch may write with --state-dir or [chassis] state_dir"
)]
pub struct CauseError {
    /// The file or folder.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// The reboot causes of one chassis.
#[derive(Debug)]
pub struct CauseLog {
    path: PathBuf,
    by_id: HashMap<String, Vec<Cause>>,
    lines: usize,
}

impl CauseLog {
    /// Open (creating the folder, mode 0700, if needed) and read what earlier runs kept.
    /// Lines that do not parse are skipped: the file is ours, but a crash may cut a line.
    pub fn open(dir: &Path) -> Result<CauseLog, CauseError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CauseError { path, source }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err(dir))?;
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(&path)(e)),
        };
        let mut log = CauseLog { path, by_id: HashMap::new(), lines: 0 };
        for line in text.lines() {
            if let Ok(c) = serde_json::from_str::<Cause>(line) {
                log.remember(c);
            }
        }
        Ok(log)
    }

    fn remember(&mut self, c: Cause) {
        self.lines += 1;
        let v = self.by_id.entry(c.id.clone()).or_default();
        v.push(c);
        if v.len() > KEEP {
            v.remove(0);
        }
    }

    /// Record a cause now: appended to the file (compacted to the last [`KEEP`] per
    /// secondary when it has grown well past that).
    pub fn record(&mut self, id: &str, cause: &str, action: &str) -> Result<Cause, CauseError> {
        let c = Cause {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            id: id.into(),
            cause: cause.into(),
            action: action.into(),
        };
        self.remember(c.clone());
        let kept: usize = self.by_id.values().map(Vec::len).sum();
        if self.lines > 2 * kept.max(KEEP) {
            self.compact()?;
        } else {
            let mut line = serde_json::to_string(&c)
                .map_err(|e| CauseError { path: self.path.clone(), source: std::io::Error::other(e) })?;
            line.push('\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(|source| CauseError { path: self.path.clone(), source })?;
            f.write_all(line.as_bytes()).map_err(|source| CauseError { path: self.path.clone(), source })?;
        }
        Ok(c)
    }

    fn compact(&mut self) -> Result<(), CauseError> {
        let mut all: Vec<&Cause> = self.by_id.values().flatten().collect();
        all.sort_by(|a, b| a.time.cmp(&b.time));
        let mut text = String::new();
        for c in &all {
            text.push_str(&serde_json::to_string(c).unwrap_or_default());
            text.push('\n');
        }
        self.lines = all.len();
        monarch_drivers::fs::write_atomically(&self.path, text.as_bytes())
            .map_err(|source| CauseError { path: self.path.clone(), source })
    }

    /// Every cause kept for `id`, oldest first.
    pub fn history(&self, id: &str) -> &[Cause] {
        self.by_id.get(id).map_or(&[], Vec::as_slice)
    }

    /// Where the causes are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_across_opens_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut log = CauseLog::open(&state).unwrap();
        log.record("dpu1", "its image was killed by SIGKILL", "restarted").unwrap();
        log.record("dpu1", "it stopped heartbeating", "failed: restart limit reached").unwrap();
        // A crash cut the last line short.
        let mut f = std::fs::OpenOptions::new().append(true).open(state.join(FILE)).unwrap();
        f.write_all(b"{\"time\":\"2026").unwrap();
        let log = CauseLog::open(&state).unwrap();
        let h = log.history("dpu1");
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].action, "failed: restart limit reached");
        assert!(log.history("host").is_empty());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn the_file_is_compacted_to_the_last_causes_of_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CauseLog::open(dir.path()).unwrap();
        for i in 0..(3 * KEEP) {
            log.record("dpu0", &format!("crash {i}"), "restarted").unwrap();
        }
        let log = CauseLog::open(dir.path()).unwrap();
        let h = log.history("dpu0");
        assert_eq!(h.len(), KEEP);
        assert_eq!(h.last().unwrap().cause, format!("crash {}", 3 * KEEP - 1));
        let lines = std::fs::read_to_string(dir.path().join(FILE)).unwrap().lines().count();
        assert!(lines <= 2 * KEEP, "{lines} lines");
    }
}
