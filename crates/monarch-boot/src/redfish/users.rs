//! The Redfish service's users file: the operator's, htpasswd-style, one user a line.
//!
//! ```text
//! # NAME:HASH[:ROLE]
//! admin:$argon2id$v=19$m=19456,t=2,p=1$...:Administrator
//! ops:$2y$10$...:Operator
//! viewer:$2y$10$...
//! ```
//!
//! HASH is an argon2 PHC string (`$argon2id$`, `$argon2i$`, `$argon2d$`), as
//! `monarch redfish useradd FILE NAME` writes, or bcrypt (`$2a$`, `$2b$`, `$2y$`), as
//! `htpasswd -B FILE NAME` writes. ROLE is one of Redfish's standard roles
//! `Administrator`, `Operator`, `ReadOnly`; a line without one is `ReadOnly`, the role that
//! can change nothing. Blank lines and lines starting with `#` are ignored.
//!
//! [`Users::check`] verifies a name and password (HTTP Basic) and caches a success in memory
//! under a keyed digest, so a client that authenticates on every request does not pay for a
//! deliberately slow hash each time; the file is re-read when it changes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _};

/// A Redfish standard role: what a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Everything, including the users themselves (privilege ConfigureUsers).
    #[value(name = "Administrator")]
    Administrator,
    /// Read, and operate the chassis: reset, power (privilege ConfigureComponents).
    #[value(name = "Operator")]
    Operator,
    /// Read only (privilege Login). The role of a line that names none.
    #[value(name = "ReadOnly")]
    ReadOnly,
}

impl Role {
    /// The three, in the order of their power.
    pub const ALL: [Role; 3] = [Role::Administrator, Role::Operator, Role::ReadOnly];

    /// The Redfish role id, as written in the users file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "Administrator",
            Role::Operator => "Operator",
            Role::ReadOnly => "ReadOnly",
        }
    }

    /// Whether the role holds the Redfish privilege ConfigureComponents (reset, power).
    pub fn may_configure(self) -> bool {
        matches!(self, Role::Administrator | Role::Operator)
    }

    /// Whether the role holds the Redfish privilege ConfigureUsers.
    pub fn may_configure_users(self) -> bool {
        matches!(self, Role::Administrator)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: expected Administrator, Operator or ReadOnly")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    /// The role id, in any letter case (`ReadOnly`, `readonly`).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// What went wrong with a users file, naming the file, the line and the fix.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file cannot be read.
    #[error("cannot read the users file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A user name that cannot be written to the file.
    #[error("bad user name `{0}`: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// `add` without `replace`, of a name the file already has.
    #[error("user {name} is already in {}; give --replace to set a new password and role", path.display())]
    Exists {
        /// The user.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// `add` with an empty password.
    #[error("refusing an empty password")]
    EmptyPassword,
    /// Hashing the password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The file cannot be written.
    #[error("cannot write the users file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A password hash of a scheme the file accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hash {
    /// An argon2 PHC string (argon2id, argon2i or argon2d).
    Argon2(String),
    /// A bcrypt string (`$2a$`, `$2b$`, `$2y$`).
    Bcrypt(String),
}

impl Hash {
    fn text(&self) -> &str {
        match self {
            Hash::Argon2(s) | Hash::Bcrypt(s) => s,
        }
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Argon2(s) => PasswordHash::new(s)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()),
            Hash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// One user of the table.
#[derive(Clone, Debug)]
struct Entry {
    hash: Hash,
    role: Role,
}

/// What identifies a version of the file: a change of any means it was rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

/// The file as last read successfully.
#[derive(Debug)]
struct Table {
    users: HashMap<String, Entry>,
    stamp: Stamp,
    /// About the file itself (its mode).
    warnings: Vec<String>,
}

/// How often [`Users::check`] looks at the file for a change, at most.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Cached successes kept before the cache is emptied (a bound on memory, not a policy).
const CACHE_MAX: usize = 4096;

/// The users of the Redfish service, loaded from a users file; share it behind an `Arc`.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    table: RwLock<Table>,
    /// Why the last re-read of a changed file failed (the table read before is kept).
    reload_error: Mutex<Option<String>>,
    /// When the file was last looked at for a change.
    looked: Mutex<Instant>,
    /// Keyed digests of (name, password, hash) that verified.
    cache: Mutex<HashSet<[u8; 32]>>,
    /// This process's key of those digests.
    key: [u8; 32],
}

impl Users {
    /// Read a users file. Errors name the file, the line and the fix; a file its group or
    /// others can read loads, with a warning in [`Users::warnings`].
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let table = read_table(path)?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| UsersError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(format!("no random key for the credential cache: {e}")),
        })?;
        Ok(Users {
            path: path.to_owned(),
            table: RwLock::new(table),
            reload_error: Mutex::new(None),
            looked: Mutex::new(Instant::now()),
            cache: Mutex::new(HashSet::new()),
            key,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(PoisonError::into_inner).users.len()
    }

    /// Whether the file has no user (then nobody can log in).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the operator should know: the file's mode, and why a changed file was not taken
    /// (the users read before stay in force until it is fixed).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.table.read().unwrap_or_else(PoisonError::into_inner).warnings.clone();
        if let Some(e) = self.reload_error.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            w.push(format!("the changed users file was not taken, the users read before stay: {e}"));
        }
        w
    }

    /// The role of `name` if this very password was checked right before (no hashing: cheap
    /// enough for an async task); `None` means "not known", not "wrong": then [`Users::check`].
    pub fn cached(&self, name: &str, password: &str) -> Option<Role> {
        self.refresh(false);
        let entry = self.table.read().unwrap_or_else(PoisonError::into_inner).users.get(name).cloned()?;
        let digest = self.digest(name, password, entry.hash.text());
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).contains(&digest).then_some(entry.role)
    }

    /// The role of `name` if `password` is its password. A success is remembered (as a keyed
    /// digest, never the password) so the next check of the same pair is immediate; a failure
    /// costs a full hash every time (tens of milliseconds and MiBs of memory), for a known
    /// name or not.
    pub fn check(&self, name: &str, password: &str) -> Option<Role> {
        self.refresh(false);
        let entry = self.table.read().unwrap_or_else(PoisonError::into_inner).users.get(name).cloned();
        let Some(entry) = entry else {
            // As long as a real check, so a name cannot be probed by the time of its answer.
            let _ = dummy_hash().verify(password);
            return None;
        };
        let digest = self.digest(name, password, entry.hash.text());
        if self.cache.lock().unwrap_or_else(PoisonError::into_inner).contains(&digest) {
            return Some(entry.role);
        }
        if !entry.hash.verify(password) {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(digest);
        Some(entry.role)
    }

    fn digest(&self, name: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [name, password, hash] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// Re-read the file if it changed since it was read (looking at most once a
    /// [`RELOAD_EVERY`] unless `now`). A broken new file leaves the table as it was.
    fn refresh(&self, now: bool) {
        {
            let mut looked = self.looked.lock().unwrap_or_else(PoisonError::into_inner);
            if !now && looked.elapsed() < RELOAD_EVERY {
                return;
            }
            *looked = Instant::now();
        }
        let stamp = std::fs::metadata(&self.path).map(|m| Stamp::of(&m));
        let old = self.table.read().unwrap_or_else(PoisonError::into_inner).stamp;
        if stamp.as_ref().is_ok_and(|s| *s == old) {
            return;
        }
        let mut error = self.reload_error.lock().unwrap_or_else(PoisonError::into_inner);
        match read_table(&self.path) {
            Ok(t) => {
                *self.table.write().unwrap_or_else(PoisonError::into_inner) = t;
                *error = None;
            }
            Err(e) => {
                // Told once per change: the old table stays in force meanwhile.
                if error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!(
                        "Redfish: the changed users file was not taken; the users before the change stay in force: {e}"
                    );
                }
                *error = Some(e.to_string());
            }
        }
    }
}

/// A hash of the default cost, checked for unknown names.
fn dummy_hash() -> &'static Hash {
    static DUMMY: OnceLock<Hash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = b"monarch-redfish-no-such-user";
        let hash = Argon2::default()
            .hash_password_with_salt(b"no such user", salt)
            .map(|h| h.to_string())
            .unwrap_or_default();
        Hash::Argon2(hash)
    })
}

/// Whether `name` can be a user of the file.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_table(path: &Path) -> Result<Table, UsersError> {
    let read_err = |source| UsersError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let text = std::io::read_to_string(file).map_err(read_err)?;
    let mut warnings = Vec::new();
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (_, true) => Some("others"),
        (true, false) => Some("its group"),
        _ => None,
    };
    if let Some(who) = who {
        let p = path.display();
        warnings.push(format!("users file {p} is readable by {who} (mode {mode:04o}); chmod 600 {p}"));
    }
    let mut users = HashMap::new();
    let mut first_line = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| UsersError::Line { path: path.to_owned(), line: n, message };
        let (name, entry) = parse_line(path, line).map_err(err)?;
        if let Some(first) = first_line.insert(name.to_owned(), n) {
            return Err(err(format!("user {name} again (first on line {first}); keep one line per user")));
        }
        users.insert(name.to_owned(), entry);
    }
    Ok(Table { users, stamp: Stamp::of(&meta), warnings })
}

fn parse_line<'l>(path: &Path, line: &'l str) -> Result<(&'l str, Entry), String> {
    let mut fields = line.splitn(3, ':');
    let name = fields.next().unwrap_or_default();
    let Some(hash) = fields.next() else {
        return Err("expected NAME:HASH or NAME:HASH:ROLE".to_owned());
    };
    if !valid_name(name) {
        return Err(format!("bad user name `{name}`: use 1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    let remake = format!("make one with `monarch redfish useradd {} {name} --replace`", path.display());
    let hash = if ["$argon2id$", "$argon2i$", "$argon2d$"].iter().any(|p| hash.starts_with(p)) {
        PasswordHash::new(hash)
            .map_err(|e| format!("the argon2 hash of {name} is malformed ({e}); {remake}"))?;
        Hash::Argon2(hash.to_owned())
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        if !bcrypt_shape(hash) {
            return Err(format!(
                "the bcrypt hash of {name} is malformed (not $2y$NN$ and 53 characters); {remake}"
            ));
        }
        Hash::Bcrypt(hash.to_owned())
    } else {
        return Err(format!(
            "the password hash of {name} is neither argon2 ($argon2id$…) nor bcrypt ($2y$…); MD5 ($apr1$), SHA-1 \
             ({{SHA}}) and crypt hashes are not accepted: {remake}, or `htpasswd -B {} {name}`",
            path.display()
        ));
    };
    let role = match fields.next() {
        None => Role::ReadOnly,
        Some(r) => Role::from_str(r).map_err(|e| format!("{e} (or no :ROLE at all, for ReadOnly)"))?,
    };
    Ok((name, Entry { hash, role }))
}

/// `$2y$NN$` then 22 characters of salt and 31 of hash, in bcrypt's base64 alphabet.
fn bcrypt_shape(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'))
}

/// What [`add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The file written.
    pub path: PathBuf,
    /// The user.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Whether the user was there before (and `replace` was given).
    pub replaced: bool,
    /// Whether the file was made (mode 0600).
    pub created: bool,
}

/// Add a user to a users file (made if missing, mode 0600), with an argon2id hash of
/// `password`; with `replace`, set the password and role of a user already there. Every other
/// line, comments included, stays as it was. The file is replaced atomically (a new file in
/// the same folder, synced, renamed over it) and keeps its mode.
pub fn add(path: &Path, name: &str, password: &str, role: Role, replace: bool) -> Result<Added, UsersError> {
    if !valid_name(name) {
        return Err(UsersError::BadName(name.to_owned()));
    }
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let (old, mode) = match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map_err(|source| UsersError::Read { path: path.to_owned(), source })?
                .permissions()
                .mode();
            (Some(text), mode & 0o7777)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0o600),
        Err(source) => return Err(UsersError::Read { path: path.to_owned(), source }),
    };
    let hash =
        Argon2::default().hash_password(password.as_bytes()).map_err(|e| UsersError::Hash(e.to_string()))?;
    let record = format!("{name}:{hash}:{}", role.name());
    let mut out = String::new();
    let mut replaced = false;
    for line in old.as_deref().unwrap_or_default().lines() {
        let t = line.trim();
        let is_user = !t.starts_with('#') && t.split(':').next() == Some(name) && t.contains(':');
        if !is_user {
            out.push_str(line);
            out.push('\n');
        } else if !replace {
            return Err(UsersError::Exists { name: name.to_owned(), path: path.to_owned() });
        } else if !replaced {
            out.push_str(&record);
            out.push('\n');
            replaced = true;
        } // a further line of the same user (an error to `load`) is dropped
    }
    if !replaced {
        out.push_str(&record);
        out.push('\n');
    }
    monarch_drivers::fs::write_atomically_with_mode(path, out.as_bytes(), mode)
        .map_err(|source| UsersError::Write { path: path.to_owned(), source })?;
    Ok(Added { path: path.to_owned(), name: name.to_owned(), role, replaced, created: old.is_none() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is the failure report
mod tests {
    use super::*;

    /// An argon2id hash of little work, for tests.
    fn cheap_argon2(password: &str) -> String {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password(password.as_bytes()).unwrap().to_string()
    }

    fn file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("users");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn roles() {
        assert_eq!("Operator".parse::<Role>().unwrap(), Role::Operator);
        assert_eq!("readonly".parse::<Role>().unwrap(), Role::ReadOnly);
        let e = "Root".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("Administrator, Operator or ReadOnly"), "{e}");
        assert!(Role::Operator.may_configure() && !Role::Operator.may_configure_users());
        assert!(Role::Administrator.may_configure_users() && !Role::ReadOnly.may_configure());
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
    }

    #[test]
    fn argon2_and_bcrypt_users_check() {
        let dir = tempfile::tempdir().unwrap();
        let bc = bcrypt::hash("bpass", 4).unwrap().replacen("$2b$", "$2y$", 1); // as `htpasswd -B`
        let text = format!(
            "# operators\n\nadmin:{}:Administrator\nops:{bc}:Operator\n  viewer:{}  \n",
            cheap_argon2("apass"),
            cheap_argon2("vpass")
        );
        let users = Users::load(&file(dir.path(), &text)).unwrap();
        assert_eq!(users.len(), 3);
        assert!(users.warnings().is_empty(), "{:?}", users.warnings());
        assert_eq!(users.check("admin", "apass"), Some(Role::Administrator));
        assert_eq!(users.check("admin", "apass"), Some(Role::Administrator), "cached");
        assert_eq!(users.check("ops", "bpass"), Some(Role::Operator));
        assert_eq!(users.check("viewer", "vpass"), Some(Role::ReadOnly), "no role: ReadOnly");
        assert_eq!(users.check("admin", "bpass"), None);
        assert_eq!(users.check("ops", "bpas"), None);
        assert_eq!(users.check("nobody", "apass"), None);
        assert_eq!(users.check("", ""), None);
        assert_eq!(users.cache.lock().unwrap().len(), 3, "only successes are cached");
    }

    #[test]
    fn a_file_others_can_read_loads_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), &format!("a:{}\n", cheap_argon2("x")));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let users = Users::load(&p).unwrap();
        let w = users.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("readable by others (mode 0644)") && w[0].contains("chmod 600"), "{w:?}");
    }

    #[test]
    fn malformed_lines_are_named_with_their_number_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let good = cheap_argon2("x");
        let cases = [
            ("a:$apr1$abc$def\n", 1, "neither argon2"),
            ("# c\na:{SHA}abc=\n", 2, "monarch redfish useradd"),
            ("\n\nno colon here\n", 3, "NAME:HASH"),
            ("a b:GOOD\n", 1, "bad user name"),
            ("a:GOOD:Root\n", 1, "unknown role `Root`"),
            ("a:GOOD\nb:GOOD\na:GOOD\n", 3, "first on line 1"),
            ("a:$argon2id$garbage\n", 1, "argon2 hash of a is malformed"),
            ("a:$2y$04$short\n", 1, "bcrypt hash of a is malformed"),
        ];
        for (text, line, says) in cases {
            let p = file(dir.path(), &text.replace("GOOD", &good));
            let e = Users::load(&p).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, UsersError::Line { line: l, .. } if l == line), "{text:?}: {msg}");
            assert!(msg.starts_with(&format!("{}:{line}: ", p.display())), "{msg}");
            assert!(msg.contains(says), "{text:?}: {msg}");
        }
        let missing = Users::load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn add_and_replace_keep_the_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        let added = add(&p, "admin", "first", Role::Administrator, false).unwrap();
        assert!(added.created && !added.replaced);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let mut text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("admin:$argon2id$") && text.ends_with(":Administrator\n"), "{text}");
        text = format!("# the chassis operators\n{text}\n# viewers below\nv:{}\n", cheap_argon2("v"));
        std::fs::write(&p, &text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();

        let e = add(&p, "admin", "second", Role::Operator, false).unwrap_err();
        assert!(e.to_string().contains("--replace"), "{e}");
        assert!(matches!(add(&p, "x", "", Role::Operator, false), Err(UsersError::EmptyPassword)));
        assert!(matches!(add(&p, "x y", "p", Role::Operator, false), Err(UsersError::BadName(_))));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "a refused add leaves the file alone");

        let users = Users::load(&p).unwrap();
        assert_eq!(users.check("admin", "first"), Some(Role::Administrator));
        let again = add(&p, "admin", "second", Role::Operator, true).unwrap();
        assert!(again.replaced && !again.created);
        let after = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<_> = after.lines().collect();
        assert_eq!(lines[0], "# the chassis operators");
        assert!(lines[1].starts_with("admin:$argon2id$") && lines[1].ends_with(":Operator"), "{after}");
        assert_eq!(&lines[2..], &text.lines().collect::<Vec<_>>()[2..], "the rest as it was");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640, "the mode kept");

        // The loaded table follows the file (looked at once a second; here at once).
        users.refresh(true);
        assert_eq!(users.check("admin", "first"), None);
        assert_eq!(users.check("admin", "second"), Some(Role::Operator));
        add(&p, "late", "p", Role::ReadOnly, false).unwrap();
        std::thread::sleep(RELOAD_EVERY + Duration::from_millis(100));
        assert_eq!(users.check("late", "p"), Some(Role::ReadOnly), "re-read on a check after a second");
        assert_eq!(users.len(), 3);
    }

    #[test]
    fn a_broken_new_file_keeps_the_old_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), &format!("a:{}\n", cheap_argon2("x")));
        let users = Users::load(&p).unwrap();
        std::fs::write(&p, "a:plain-text\n").unwrap();
        users.refresh(true);
        assert_eq!(users.check("a", "x"), Some(Role::ReadOnly), "the users read before stay");
        let w = users.warnings();
        assert!(w.iter().any(|w| w.contains(":1: the password hash of a")), "{w:?}");
        std::fs::write(&p, format!("a:{}:Operator\n", cheap_argon2("y"))).unwrap();
        users.refresh(true);
        assert_eq!(users.check("a", "y"), Some(Role::Operator));
        assert!(users.warnings().is_empty(), "the error is forgotten once the file is fixed");
    }

    #[test]
    fn users_are_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Users>();
    }
}
