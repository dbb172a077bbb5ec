//! What each machine boots: the boot catalog.
//!
//! Read from `ROOT/machines.toml` (optional) or built by a caller from the topology:
//!
//! ```toml
//! [default]                      # for every machine not listed
//! kernel = "vmlinuz"             # paths relative to the served root
//! initrd = "initrd.img"
//! cmdline = "console=ttyS0"
//! image = "payload.efi"          # the data block offered to monarch agents (network boot)
//! [machine."52:54:00:12:34:56"]  # by MAC; any field of [default], plus name = "node1"
//! name = "node1"
//! kernel = "node1/vmlinuz"
//! ```
//!
//! A listed machine inherits every field it does not set from `[default]`. Every path is
//! checked when the catalog is made (it must name an existing file inside the root, with no
//! `..` and no symlink that leads out), and again by the services when they open it, since
//! files can change under a running server. The same checks ([`resolve_in`]) confine the
//! HTTP service's plain file requests.

use monarch_proto::mac::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File name of the catalog inside the served root.
pub const CATALOG_FILE: &str = "machines.toml";

/// One machine's boot instructions. Paths are relative to the served root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// A name for people (events, iPXE script comments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kernel for iPXE/HTTP boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initrd for iPXE/HTTP boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The data block offered to monarch agents by the discovery service (network boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Machine {
    /// `self` with every unset field taken from `default`.
    pub fn inherit(&self, default: &Machine) -> Machine {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        Machine {
            name: self.name.clone(),
            kernel: pick(&self.kernel, &default.kernel),
            initrd: pick(&self.initrd, &default.initrd),
            cmdline: pick(&self.cmdline, &default.cmdline),
            image: pick(&self.image, &default.image),
        }
    }

    fn paths(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("kernel", self.kernel.as_deref()),
            ("initrd", self.initrd.as_deref()),
            ("image", self.image.as_deref()),
        ]
    }
}

/// Why a relative path cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Absolute, `..`, backslash, NUL or empty: refused without touching the file system.
    #[error("not a plain relative path (no leading /, no .., no backslash)")]
    NotRelative,
    /// Nothing by that name.
    #[error("no such file")]
    Missing,
    /// It resolves (through a symlink) to a place outside the root.
    #[error("it leads outside the served root")]
    Outside,
    /// A directory or a device, not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// The boot catalog itself (`machines.toml`: which machine boots what): never served.
    #[error("the boot catalog, which is not served")]
    Catalog,
    /// Another I/O error (permissions…).
    #[error("{0}")]
    Io(String),
}

/// The canonical path of `rel` inside `root` (which must already be canonical), refusing
/// anything that is not a regular file inside it.
///
/// Two stages: a lexical check that needs no file system (so `../x` and `/etc/passwd` are
/// refused the same way whether they exist or not), then `canonicalize` and a prefix check
/// (so a symlink inside the root that points out of it is refused too).
pub fn resolve_in(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    if rel.is_empty() || rel.starts_with('/') || rel.contains('\\') || rel.contains('\0') {
        return Err(PathError::NotRelative);
    }
    let mut p = root.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::NotRelative),
            part => p.push(part),
        }
    }
    let canon = std::fs::canonicalize(&p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => PathError::Missing,
        _ => PathError::Io(e.to_string()),
    })?;
    if !canon.starts_with(root) {
        return Err(PathError::Outside);
    }
    if canon == root.join(CATALOG_FILE) {
        return Err(PathError::Catalog);
    }
    match std::fs::metadata(&canon) {
        Ok(m) if m.is_file() => Ok(canon),
        Ok(_) => Err(PathError::NotAFile),
        Err(e) => Err(PathError::Io(e.to_string())),
    }
}

/// A catalog that can be replaced while the services run: `monarch netboot provision` and
/// `repurpose` edit `machines.toml`, and `monarch netboot serve` reloads it. Readers take a
/// snapshot per request ([`SharedCatalog::get`]), so a request never sees half an update.
#[derive(Debug, Clone)]
pub struct SharedCatalog(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Catalog>>>);

impl SharedCatalog {
    /// Share `catalog`.
    pub fn new(catalog: Catalog) -> SharedCatalog {
        SharedCatalog(std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(catalog))))
    }

    /// The current catalog.
    pub fn get(&self) -> std::sync::Arc<Catalog> {
        // A writer that panicked left a whole catalog behind (replacement is one store).
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replace it; requests already running keep the snapshot they took.
    pub fn replace(&self, catalog: Catalog) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(catalog);
    }
}

impl From<Catalog> for SharedCatalog {
    fn from(c: Catalog) -> Self {
        SharedCatalog::new(c)
    }
}

impl From<std::sync::Arc<Catalog>> for SharedCatalog {
    fn from(c: std::sync::Arc<Catalog>) -> Self {
        SharedCatalog(std::sync::Arc::new(std::sync::RwLock::new(c)))
    }
}

/// Whether a catalog `kernel`/`initrd` value is a full URL for iPXE (`tftp://`, `http://`,
/// `https://`) rather than a path under the root.
pub fn is_url(s: &str) -> bool {
    ["tftp://", "http://", "https://"].iter().any(|scheme| s.starts_with(scheme))
}

/// Why a catalog could not be made. Each names the file (and line when known) and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The served root itself is unusable.
    #[error("boot root {root}: {error}: create the directory or pass another --root")]
    Root {
        /// The root given.
        root: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The catalog file exists but cannot be read.
    #[error("cannot read {file}: {error}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Not valid TOML, or unknown fields.
    #[error("{file}{}: {message}: fix the TOML (fields: name, kernel, initrd, cmdline, image)", at_line(*line))]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A `[machine."…"]` key that is not a MAC address.
    #[error("{file}{}: [machine.\"{key}\"] is not a MAC address: write it as \"52:54:00:12:34:56\"", at_line(*line))]
    BadMac {
        /// The file.
        file: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The key as written.
        key: String,
    },
    /// The same MAC listed twice (e.g. once with `:` and once with `-`).
    #[error("{file}{}: machine {mac} is listed twice: keep one entry", at_line(*line))]
    Duplicate {
        /// The file.
        file: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The MAC.
        mac: String,
    },
    /// A path that cannot be served (boxed: the details are many, the error is rare).
    #[error("{0}")]
    Path(Box<BadPath>),
}

/// A catalog path that cannot be served, with where it was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}{}: {section} {field} = \"{path}\": {problem}: give a path relative to {root} that names a file inside it",
    file.as_ref().map_or("the boot catalog".to_string(), |f| f.display().to_string()),
    at_line(*line),
    root = root.display()
)]
pub struct BadPath {
    /// The catalog file (None when built from parts).
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// `[default]` or `[machine."…"]`.
    pub section: String,
    /// `kernel`, `initrd` or `image`.
    pub field: &'static str,
    /// The path as written.
    pub path: String,
    /// What is wrong with it.
    pub problem: PathError,
    /// The served root.
    pub root: PathBuf,
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// `machines.toml` as written, with spans for error lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    default: Option<toml::Spanned<Machine>>,
    #[serde(default)]
    machine: BTreeMap<toml::Spanned<String>, toml::Spanned<Machine>>,
}

/// What every machine boots, with paths checked against the served root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    root: PathBuf,
    default: Option<Machine>,
    /// Listed machines, already merged with the default.
    machines: BTreeMap<Mac, Machine>,
}

impl Catalog {
    /// Read `root/machines.toml`; a root without one gives an empty catalog (no machine has
    /// boot instructions, plain files are still served).
    pub fn load(root: &Path) -> Result<Catalog, CatalogError> {
        let canon = canonical_root(root)?;
        let file = canon.join(CATALOG_FILE);
        let src = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Catalog { root: canon, default: None, machines: BTreeMap::new() });
            }
            Err(error) => return Err(CatalogError::Read { file, error }),
        };
        let line_of =
            |span: std::ops::Range<usize>| src[..span.start.min(src.len())].matches('\n').count() + 1;
        let parsed: FileToml = toml::from_str(&src).map_err(|e| CatalogError::Syntax {
            file: file.clone(),
            line: e.span().map(line_of),
            message: e.message().trim().to_string(),
        })?;
        let default = parsed.default.map(|d| (line_of(d.span()), d.into_inner()));
        let mut machines = Vec::new();
        for (key, m) in parsed.machine {
            let line = line_of(key.span());
            let mac = key.get_ref().parse::<Mac>().map_err(|_| CatalogError::BadMac {
                file: file.clone(),
                line: Some(line),
                key: key.get_ref().clone(),
            })?;
            machines.push((mac, line_of(m.span()), m.into_inner()));
        }
        Catalog::build(canon, Some(&file), default, machines)
    }

    /// A catalog built by a caller (e.g. from the topology): `default` for unlisted machines,
    /// `machines` by MAC (each inherits unset fields from `default`). Paths are checked as in
    /// [`Catalog::load`].
    pub fn from_parts(
        root: &Path,
        default: Option<Machine>,
        machines: impl IntoIterator<Item = (Mac, Machine)>,
    ) -> Result<Catalog, CatalogError> {
        let canon = canonical_root(root)?;
        let machines = machines.into_iter().map(|(mac, m)| (mac, 0, m)).collect();
        Catalog::build(canon, None, default.map(|d| (0, d)), machines)
    }

    fn build(
        root: PathBuf,
        file: Option<&Path>,
        default: Option<(usize, Machine)>,
        machines: Vec<(Mac, usize, Machine)>,
    ) -> Result<Catalog, CatalogError> {
        let line = |l: usize| (l > 0).then_some(l);
        let check = |section: String, l: usize, m: &Machine| -> Result<(), CatalogError> {
            for (field, path) in m.paths() {
                // iPXE fetches kernels and initrds by URL too: a full URL is passed through
                // as written (it may name another server or protocol, e.g. `tftp://…`).
                if let Some(path) = path.filter(|p| !(field != "image" && is_url(p))) {
                    resolve_in(&root, path).map_err(|problem| {
                        CatalogError::Path(Box::new(BadPath {
                            file: file.map(Path::to_path_buf),
                            line: line(l),
                            section: section.clone(),
                            field,
                            path: path.to_string(),
                            problem,
                            root: root.clone(),
                        }))
                    })?;
                }
            }
            Ok(())
        };
        if let Some((l, d)) = &default {
            check("[default]".into(), *l, d)?;
        }
        let base = default.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
        let mut merged = BTreeMap::new();
        for (mac, l, m) in machines {
            let m = m.inherit(&base);
            check(format!("[machine.\"{mac}\"]"), l, &m)?;
            if merged.insert(mac, m).is_some() {
                return Err(CatalogError::Duplicate {
                    file: file.map_or_else(|| PathBuf::from("the boot catalog"), Path::to_path_buf),
                    line: line(l),
                    mac: mac.to_string(),
                });
            }
        }
        Ok(Catalog { root, default: default.map(|(_, d)| d), machines: merged })
    }

    /// The served root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `[default]` entry, if any.
    pub fn default_machine(&self) -> Option<&Machine> {
        self.default.as_ref()
    }

    /// Listed machines (merged with the default), by MAC.
    pub fn machines(&self) -> impl Iterator<Item = (Mac, &Machine)> {
        self.machines.iter().map(|(k, v)| (*k, v))
    }

    /// What `mac` boots: its own entry, else the default; `None` when neither exists.
    /// `lookup(None)` is the default.
    pub fn lookup(&self, mac: Option<Mac>) -> Option<&Machine> {
        mac.and_then(|m| self.machines.get(&m)).or(self.default.as_ref())
    }

    /// The canonical path of `rel` inside the root (see [`resolve_in`]).
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, PathError> {
        resolve_in(&self.root, rel)
    }

    /// The iPXE script for `mac` (or the default), with file URLs under `base_url`
    /// (e.g. `http://10.0.0.1:8080`): `kernel` + command line, `initrd`, `boot`; a machine
    /// with no kernel but an `image` chain-loads the image. `None` when the machine has
    /// neither (or no entry and there is no default).
    ///
    /// The initrd is loaded under its own name and the command line says `initrd=NAME`:
    /// EFI kernels read their initrd through that argument, BIOS boots ignore it.
    pub fn ipxe_script(&self, mac: Option<Mac>, base_url: &str) -> Option<String> {
        let m = self.lookup(mac)?;
        let base = base_url.trim_end_matches('/');
        let url = |p: &str| {
            if is_url(p) { p.to_string() } else { format!("{base}/{}", url_path(p.trim_start_matches("./"))) }
        };
        let mut s = String::from("#!ipxe\n");
        let who = match (mac, &m.name) {
            (Some(mac), Some(n)) => format!("{n} ({mac})"),
            (Some(mac), None) => mac.to_string(),
            (None, Some(n)) => n.clone(),
            (None, None) => "default".into(),
        };
        let _ = writeln!(s, "# monarch netboot: {who}");
        if let Some(kernel) = &m.kernel {
            let initrd_name = m.initrd.as_deref().map(|p| {
                let base = p.rsplit('/').next().unwrap_or(p);
                // The name travels on the command line: keep it to safe characters.
                base.chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                    .collect::<String>()
            });
            let mut args = Vec::new();
            if let Some(n) = &initrd_name {
                args.push(format!("initrd={n}"));
            }
            if let Some(c) = &m.cmdline {
                args.push(c.clone());
            }
            let _ = writeln!(
                s,
                "kernel {}{}{}",
                url(kernel),
                if args.is_empty() { "" } else { " " },
                args.join(" ")
            );
            if let (Some(initrd), Some(n)) = (&m.initrd, &initrd_name) {
                let _ = writeln!(s, "initrd --name {n} {}", url(initrd));
            }
            s.push_str("boot\n");
        } else if let Some(image) = &m.image {
            let _ = writeln!(s, "chain {}", url(image));
        } else {
            return None;
        }
        Some(s)
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf, CatalogError> {
    let canon = std::fs::canonicalize(root)
        .map_err(|error| CatalogError::Root { root: root.to_path_buf(), error })?;
    if !canon.is_dir() {
        return Err(CatalogError::Root {
            root: root.to_path_buf(),
            error: std::io::Error::other("not a directory"),
        });
    }
    Ok(canon)
}

/// Percent-encode a relative path for a URL, keeping `/` and RFC 3986 unreserved characters.
/// (Hand-written: eight lines; the `percent-encoding` crate is not a dependency of this crate.)
fn url_path(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["vmlinuz", "initrd.img", "payload.efi", "node1-vmlinuz"] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        d
    }

    #[test]
    fn load_merge_and_lookup() {
        let d = root();
        std::fs::write(
            d.path().join(CATALOG_FILE),
            r#"
[default]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0"
image = "payload.efi"

[machine."52:54:00:12:34:56"]
name = "node1"
kernel = "node1-vmlinuz"
"#,
        )
        .unwrap();
        let c = Catalog::load(d.path()).unwrap();
        let m = c.lookup(Some(MAC)).unwrap();
        assert_eq!(m.name.as_deref(), Some("node1"));
        assert_eq!(m.kernel.as_deref(), Some("node1-vmlinuz"));
        assert_eq!(m.initrd.as_deref(), Some("initrd.img"));
        assert_eq!(c.lookup(Some(Mac::new([1; 6]))).unwrap().kernel.as_deref(), Some("vmlinuz"));
        assert_eq!(c.lookup(None), c.default_machine());
        let s = c.ipxe_script(Some(MAC), "http://10.0.0.1:8080/").unwrap();
        assert_eq!(
            s,
            "#!ipxe\n# monarch netboot: node1 (52:54:00:12:34:56)\n\
             kernel http://10.0.0.1:8080/node1-vmlinuz initrd=initrd.img console=ttyS0\n\
             initrd --name initrd.img http://10.0.0.1:8080/initrd.img\nboot\n"
        );
    }

    #[test]
    fn no_file_means_empty_catalog() {
        let d = root();
        let c = Catalog::load(d.path()).unwrap();
        assert!(c.lookup(Some(MAC)).is_none());
        assert!(c.ipxe_script(None, "http://x").is_none());
    }

    fn load_err(toml: &str) -> String {
        let d = root();
        std::fs::write(d.path().join(CATALOG_FILE), toml).unwrap();
        Catalog::load(d.path()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let e = load_err("[default]\nkernal = \"vmlinuz\"\n");
        assert!(e.contains("machines.toml line 2") && e.contains("kernal"), "{e}");
        let e = load_err("[default]\nkernel = \"vmlinuz\"\n\n[machine.\"52:54:00:12:34\"]\nname = \"x\"\n");
        assert!(e.contains("line 4") && e.contains("not a MAC address"), "{e}");
        let e = load_err("[default]\nkernel = \"../etc/passwd\"\n");
        assert!(
            e.contains("[default] kernel = \"../etc/passwd\"") && e.contains("not a plain relative"),
            "{e}"
        );
        let e = load_err("[default]\nkernel = \"/etc/passwd\"\n");
        assert!(e.contains("not a plain relative"), "{e}");
        let e = load_err("[machine.\"52:54:00:12:34:56\"]\ninitrd = \"nope.img\"\n");
        assert!(e.contains("line 1") && e.contains("no such file") && e.contains("initrd"), "{e}");
        let e = load_err(
            "[machine.\"52:54:00:12:34:56\"]\nname = \"a\"\n[machine.\"52-54-00-12-34-56\"]\nname = \"b\"\n",
        );
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(d.path().join("vmlinuz"), d.path().join("inside")).unwrap();
        let c = Catalog::load(d.path()).unwrap();
        assert_eq!(c.resolve("link"), Err(PathError::Outside));
        assert!(c.resolve("inside").is_ok());
        assert!(c.resolve("./vmlinuz").is_ok());
        assert_eq!(c.resolve("a/../vmlinuz"), Err(PathError::NotRelative));
        assert_eq!(c.resolve(""), Err(PathError::NotRelative));
        assert_eq!(c.resolve("missing"), Err(PathError::Missing));
        assert_eq!(c.resolve("vmlinuz/x"), Err(PathError::Missing));
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert_eq!(c.resolve("dir"), Err(PathError::NotAFile));
        let e = Catalog::from_parts(
            d.path(),
            Some(Machine { image: Some("link".into()), ..Machine::default() }),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the boot catalog: [default] image = \"link\": it leads outside"), "{e}");
    }

    #[test]
    fn from_parts_and_chain_scripts() {
        let d = root();
        let c = Catalog::from_parts(
            d.path(),
            None,
            [(MAC, Machine { image: Some("payload.efi".into()), ..Machine::default() })],
        )
        .unwrap();
        assert_eq!(
            c.ipxe_script(Some(MAC), "http://h:1").unwrap(),
            "#!ipxe\n# monarch netboot: 52:54:00:12:34:56\nchain http://h:1/payload.efi\n"
        );
        assert!(c.lookup(Some(Mac::new([9; 6]))).is_none());
        assert!(c.ipxe_script(Some(Mac::new([9; 6])), "http://h:1").is_none());
        assert_eq!(url_path("a b/ü$.img"), "a%20b/%C3%BC%24.img");
    }

    #[test]
    fn kernel_and_initrd_urls_pass_through_but_images_stay_under_the_root() {
        let d = root();
        let m = Machine {
            kernel: Some("tftp://10.0.0.1/vmlinuz".into()),
            initrd: Some("http://other:80/i.img".into()),
            ..Machine::default()
        };
        let c = Catalog::from_parts(d.path(), None, [(MAC, m)]).unwrap();
        let script = c.ipxe_script(Some(MAC), "http://h:1").unwrap();
        assert!(script.contains("kernel tftp://10.0.0.1/vmlinuz initrd=i.img\n"), "{script}");
        assert!(script.contains("initrd --name i.img http://other:80/i.img\n"), "{script}");
        let image = Machine { image: Some("http://elsewhere/x".into()), ..Machine::default() };
        assert!(Catalog::from_parts(d.path(), None, [(MAC, image)]).is_err(), "images are served by us");
    }
}
