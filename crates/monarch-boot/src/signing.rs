//! Signed images, with files: the signature policy, key and signature files read with
//! errors that name the file and the fix, `monarch image keygen|sign|verify`, and [`Trust`]:
//! the one check every secondary (the window agent, VM stage 1, the network agent) runs over
//! the bytes it holds before it hands them off. The formats and the cryptography are
//! `monarch_proto::sign`'s.
//!
//! A signature is `IMAGE.sig`, beside the image. The monarch checks it when it reads a
//! topology (present, well-formed, made by a trusted key) and when it retrieves the image
//! (over the bytes it will send); the secondary checks it again over the bytes it received,
//! with the keys it was configured with. Only the secondary's check protects the secondary.
use clap::Args;
use monarch_proto::sign::{
    FormatError, ImageDigest, ImageHasher, KeyId, PublicKey, SecretKey, Signature, VerifyError,
};
use serde::Deserialize;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Whether a secondary's image must be signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SignaturePolicy {
    /// Signatures are neither looked for nor checked.
    #[default]
    #[value(help = "Do not look for or check signatures")]
    Off,
    /// A signature, when there is one, must verify; an unsigned image boots.
    #[value(help = "Check a signature when the image has one; boot unsigned images")]
    Optional,
    /// The image must carry a signature by a trusted key.
    #[value(help = "Refuse any image without a valid signature by a trusted key")]
    Required,
}

impl SignaturePolicy {
    /// Its name in topology files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            SignaturePolicy::Off => "off",
            SignaturePolicy::Optional => "optional",
            SignaturePolicy::Required => "required",
        }
    }

    /// Parse a name (a kernel command line's `monarch.signature=`).
    pub fn from_name(s: &str) -> Option<SignaturePolicy> {
        [SignaturePolicy::Off, SignaturePolicy::Optional, SignaturePolicy::Required]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// A VM's signature settings on its kernel command line that cannot be used.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum KernelParamsError {
    /// `monarch.signature=` names no policy.
    #[error("monarch.signature={0} is not off, optional or required")]
    Policy(String),
    /// A key in `monarch.trust=` is not a public key.
    #[error("monarch.trust: {0}")]
    Key(FormatError),
    /// A policy that checks signatures, without keys.
    #[error("monarch.signature={0} without monarch.trust keys")]
    NoKeys(&'static str),
}

/// A key or signature file that cannot be used, or an image whose signature is refused.
#[derive(Debug, Error)]
pub enum SigningError {
    /// A file could not be read.
    #[error("{what} {}: cannot read: {source}{hint}", path.display())]
    Read {
        /// Which kind of file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
        /// How to fix it.
        hint: &'static str,
    },
    /// A file does not hold what it should.
    #[error("{what} {}: {source}; {fix}", path.display())]
    Format {
        /// Which kind of file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
        /// How to fix it.
        fix: &'static str,
    },
    /// A policy that checks signatures, without a key to check them with.
    #[error(
        "signature = {policy} needs at least one trusted public key: give --trust NAME.pub (or `trust = [\"NAME.pub\"]` in the topology)"
    )]
    NoTrustedKeys {
        /// The policy given.
        policy: &'static str,
    },
    /// An output file exists.
    #[error("{} exists; monarch never overwrites a key file: choose another NAME, or move the file away yourself", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A `.sig` path holds something that is not a signature.
    #[error("{} exists and is not a monarch signature; monarch writes IMAGE.sig only over an older signature: move the file away yourself", path.display())]
    NotASignature {
        /// The file.
        path: PathBuf,
    },
    /// An output file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The image has no signature, and one is required.
    #[error("image {}: no signature ({} does not exist) and signature = \"required\"; sign it: `monarch image sign --key KEY.key {}`", image.display(), sig.display(), image.display())]
    Unsigned {
        /// The image.
        image: PathBuf,
        /// Where the signature was looked for.
        sig: PathBuf,
    },
    /// The signature does not verify.
    #[error("image {}: signature {} refused: {source}; sign the image again with a trusted key (`monarch image sign`), or add its public key to `trust`", image.display(), sig.display())]
    Refused {
        /// The image.
        image: PathBuf,
        /// The signature file.
        sig: PathBuf,
        /// Why.
        source: VerifyError,
    },
}

/// Which image signatures a secondary accepts: its own configuration, shared by `monarch
/// agent` and `monarch netboot agent`.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustArgs {
    /// A public key this secondary trusts (NAME.pub, written by `monarch image keygen -o
    /// NAME`); repeat it to trust several (key rotation). With a key, images must be signed
    /// by one of them unless --signature optional.
    #[arg(long = "trust", value_name = "FILE")]
    pub trust: Vec<PathBuf>,
    /// Whether the image must carry a signature by a trusted key [default: required with
    /// --trust, else off].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub signature: Option<SignaturePolicy>,
}

impl TrustArgs {
    /// The arguments: `--trust F … --signature P`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        for f in &self.trust {
            a.push("--trust".into());
            a.push(f.clone().into());
        }
        if let Some(p) = self.signature {
            a.push("--signature".into());
            a.push(p.name().into());
        }
        a
    }

    /// Read the key files: what the secondary trusts.
    pub fn load(&self) -> Result<Trust, SigningError> {
        let policy = self.signature.unwrap_or(if self.trust.is_empty() {
            SignaturePolicy::Off
        } else {
            SignaturePolicy::Required
        });
        if policy != SignaturePolicy::Off && self.trust.is_empty() {
            return Err(SigningError::NoTrustedKeys { policy: policy.name() });
        }
        let keys = self.trust.iter().map(|f| read_public_key(f)).collect::<Result<_, _>>()?;
        Ok(Trust { policy, keys })
    }
}

/// The detached signature of `image`: `IMAGE.sig`, beside it.
pub fn sig_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Read a small file (a key or a signature), at most `max` bytes (more is refused as not
/// being one).
pub fn read_small(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::new();
    std::fs::File::open(path)?.take(max as u64 + 1).read_to_end(&mut b)?;
    Ok(b)
}

/// Read a `.pub` file.
pub fn read_public_key(path: &Path) -> Result<PublicKey, SigningError> {
    public_key_from(path, read_small(path, PUB_MAX))
}

/// The longest `.pub` file read.
pub const PUB_MAX: usize = 256;

/// A `.pub` file's key, from what reading `path` gave.
pub fn public_key_from(path: &Path, read: std::io::Result<Vec<u8>>) -> Result<PublicKey, SigningError> {
    let what = "public key";
    let b = read.map_err(|source| SigningError::Read {
        what,
        path: path.into(),
        source,
        hint: "; paths in a topology are relative to the topology file; make one with `monarch image keygen -o NAME`",
    })?;
    PublicKey::parse(&b).map_err(|source| SigningError::Format {
        what,
        path: path.into(),
        source,
        fix: "a public key is the NAME.pub that `monarch image keygen -o NAME` wrote (never the secret NAME.key)",
    })
}

/// Read a `.key` file.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, SigningError> {
    let what = "secret key";
    let b = read_small(path, 256).map_err(|source| SigningError::Read {
        what,
        path: path.into(),
        source,
        hint: "; make one with `monarch image keygen -o NAME`",
    })?;
    SecretKey::parse(&b).map_err(|source| SigningError::Format {
        what,
        path: path.into(),
        source,
        fix: "a secret key is the NAME.key that `monarch image keygen -o NAME` wrote",
    })
}

/// Read `path` as a `.sig` file: `None` when there is none; the record's bytes (as they
/// travel to the secondary) and the parsed signature.
pub fn read_signature(path: &Path) -> Result<Option<(Vec<u8>, Signature)>, SigningError> {
    signature_from(path, read_small(path, monarch_proto::sign::SIG_MAX))
}

/// A `.sig` file's signature (`None`: there is no such file), from what reading `path` gave.
pub fn signature_from(
    path: &Path,
    read: std::io::Result<Vec<u8>>,
) -> Result<Option<(Vec<u8>, Signature)>, SigningError> {
    let what = "signature";
    let b = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SigningError::Read { what, path: path.into(), source, hint: "" }),
    };
    let sig = Signature::parse(&b).map_err(|source| SigningError::Format {
        what,
        path: path.into(),
        source,
        fix: "sign the image again: `monarch image sign --key KEY.key IMAGE` writes IMAGE.sig",
    })?;
    Ok(Some((b, sig)))
}

/// The digest of a file, read a MiB at a time.
pub fn digest_file(path: &Path) -> Result<ImageDigest, SigningError> {
    let err = |source| SigningError::Read { what: "image", path: path.into(), source, hint: "" };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = ImageHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// What `keygen` wrote.
#[derive(Debug)]
pub struct KeyPair {
    /// The secret key (mode 0600).
    pub secret: PathBuf,
    /// The public key.
    pub public: PathBuf,
    /// The key's id.
    pub id: KeyId,
}

/// `monarch image keygen -o NAME`: a new key pair in `NAME.key` (created with mode 0600) and
/// `NAME.pub`. Refuses if either file exists; leaves nothing behind on failure.
pub fn keygen(name: &Path) -> Result<KeyPair, SigningError> {
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (secret, public) = (with(".key"), with(".pub"));
    for p in [&secret, &public] {
        if p.symlink_metadata().is_ok() {
            return Err(SigningError::Exists { path: p.clone() });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Write {
        path: secret.clone(),
        source: std::io::Error::other(format!("no randomness from the OS: {e}")),
    })?;
    let key = SecretKey::from_seed(&seed);
    seed = [0; 32];
    let _ = seed;
    create_new(&secret, key.to_record().as_bytes(), 0o600)?;
    if let Err(e) = create_new(&public, key.public().to_record().as_bytes(), 0o644) {
        // Ours, created a moment ago: do not leave half a key pair.
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    Ok(KeyPair { secret, public, id: key.public().id() })
}

/// Create `path` (never over anything) with `mode`, write `bytes`, sync.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => SigningError::Exists { path: path.into() },
                _ => SigningError::Write { path: path.into(), source },
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| SigningError::Write { path: path.into(), source })
}

/// `monarch image sign --key KEY IMAGE`: write `IMAGE.sig`. An existing `IMAGE.sig` is
/// replaced (atomically) only if it is a signature itself.
pub fn sign_file(key: &Path, image: &Path) -> Result<(PathBuf, Signature), SigningError> {
    let k = read_secret_key(key)?;
    let digest = digest_file(image)?;
    let sig = k.sign(&digest);
    let out = sig_path(image);
    match out.symlink_metadata() {
        Err(_) => {}
        Ok(m) if m.is_file() && read_signature(&out).is_ok_and(|s| s.is_some()) => {}
        Ok(_) => return Err(SigningError::NotASignature { path: out }),
    }
    monarch_drivers::fs::write_atomically(&out, sig.to_record().as_bytes())
        .map_err(|source| SigningError::Write { path: out.clone(), source })?;
    Ok((out, sig))
}

/// Check `image` against its `IMAGE.sig` with `trusted` keys (the monarch's check, and
/// `monarch image verify`): the key that verified.
pub fn verify_file(trusted: &[PublicKey], image: &Path) -> Result<KeyId, SigningError> {
    let sig = sig_path(image);
    let Some((_, s)) = read_signature(&sig)? else {
        return Err(SigningError::Unsigned { image: image.into(), sig });
    };
    let d = digest_file(image)?;
    s.verify(trusted, &d).map_err(|source| SigningError::Refused { image: image.into(), sig, source })
}

/// The monarch's check of `image`'s `IMAGE.sig` over `held` (the digest of the bytes it will
/// send), with the keys the secondary trusts: the `.sig` record to send along (`None`:
/// unsigned and optional, or signatures off).
pub fn check_image(trust: &Trust, image: &Path, held: &ImageDigest) -> Result<Option<Vec<u8>>, SigningError> {
    if trust.policy == SignaturePolicy::Off {
        return Ok(None);
    }
    let sig = sig_path(image);
    let Some((record, s)) = read_signature(&sig)? else {
        if trust.policy == SignaturePolicy::Required {
            return Err(SigningError::Unsigned { image: image.into(), sig });
        }
        return Ok(None);
    };
    s.verify(&trust.keys, held).map_err(|source| SigningError::Refused {
        image: image.into(),
        sig,
        source,
    })?;
    Ok(Some(record))
}

/// What a secondary trusts: its policy and its keys, from its own configuration (its command
/// line, its kernel command line), never from the monarch's window or network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Off, optional or required.
    pub policy: SignaturePolicy,
    /// The trusted public keys.
    pub keys: Vec<PublicKey>,
}

/// What [`Trust::check`] concluded of an image it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signatures are off: nothing was checked.
    Unchecked,
    /// Optional, and the image came unsigned.
    Unsigned,
    /// Signed by this trusted key, over exactly these bytes.
    Signed(KeyId),
}

/// Why a secondary refuses an image.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Required, and no signature came with the image.
    #[error("the image came without a signature, and this secondary requires one")]
    Unsigned,
    /// The signature record does not parse.
    #[error("the signature that came with the image is malformed: {0}")]
    Malformed(FormatError),
    /// It does not verify.
    #[error("{0}")]
    Verify(VerifyError),
}

impl Trust {
    /// Check `record` (the `.sig` record that came with the image, if any) over `held`, the
    /// digest of the bytes this secondary holds and would hand off.
    pub fn check(&self, record: Option<&[u8]>, held: &ImageDigest) -> Result<Verdict, Refusal> {
        match (self.policy, record) {
            (SignaturePolicy::Off, _) => Ok(Verdict::Unchecked),
            (SignaturePolicy::Optional, None) => Ok(Verdict::Unsigned),
            (SignaturePolicy::Required, None) => Err(Refusal::Unsigned),
            (_, Some(r)) => {
                let s = Signature::parse(r).map_err(Refusal::Malformed)?;
                s.verify(&self.keys, held).map(Verdict::Signed).map_err(Refusal::Verify)
            }
        }
    }

    /// The kernel command line parameters that give VM stage 1 this trust (it has no files
    /// of the host's): `monarch.signature=P monarch.trust=HEX,HEX`; empty when off.
    pub fn kernel_params(&self) -> String {
        if self.policy == SignaturePolicy::Off {
            return String::new();
        }
        let keys: Vec<String> = self.keys.iter().map(PublicKey::to_hex).collect();
        format!(" monarch.signature={} monarch.trust={}", self.policy.name(), keys.join(","))
    }

    /// Read [`Trust::kernel_params`] back (stage 1). Strict: an unknown policy or a bad key
    /// is an error, so a misconfigured secondary refuses every image rather than none.
    pub fn from_kernel_params(policy: Option<&str>, keys: Option<&str>) -> Result<Trust, KernelParamsError> {
        let policy = match policy {
            None => SignaturePolicy::Off,
            Some(p) => {
                SignaturePolicy::from_name(p).ok_or_else(|| KernelParamsError::Policy(p.to_string()))?
            }
        };
        let keys = match keys {
            None | Some("") => Vec::new(),
            Some(k) => k
                .split(',')
                .map(|h| PublicKey::from_hex(h).map_err(KernelParamsError::Key))
                .collect::<Result<_, _>>()?,
        };
        if policy != SignaturePolicy::Off && keys.is_empty() {
            return Err(KernelParamsError::NoKeys(policy.name()));
        }
        Ok(Trust { policy, keys })
    }

    /// Whether the bytes must be hashed at all.
    pub fn checks(&self) -> bool {
        self.policy != SignaturePolicy::Off
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("ops");
        let kp = keygen(&name).unwrap();
        let mode = std::fs::metadata(&kp.secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the secret key is its owner's alone");
        let p = read_public_key(&kp.public).unwrap();
        assert_eq!(p.id(), kp.id);
        assert_eq!(read_secret_key(&kp.secret).unwrap().public(), p);
        let before = std::fs::read(&kp.secret).unwrap();
        assert!(matches!(keygen(&name), Err(SigningError::Exists { .. })));
        assert_eq!(std::fs::read(&kp.secret).unwrap(), before, "the existing key is untouched");
        // Only the .pub exists: still refused, and no .key is created.
        let other = dir.path().join("half");
        std::fs::write(dir.path().join("half.pub"), b"x").unwrap();
        assert!(matches!(keygen(&other), Err(SigningError::Exists { .. })));
        assert!(!dir.path().join("half.key").exists());
    }

    #[test]
    fn sign_then_verify_and_every_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let kp = keygen(&dir.path().join("k")).unwrap();
        let other = keygen(&dir.path().join("o")).unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, vec![7u8; 5000]).unwrap();
        let trusted = [read_public_key(&kp.public).unwrap()];
        assert!(matches!(verify_file(&trusted, &img), Err(SigningError::Unsigned { .. })));
        let (sig, _) = sign_file(&kp.secret, &img).unwrap();
        assert_eq!(sig, dir.path().join("img.sig"));
        assert_eq!(verify_file(&trusted, &img).unwrap(), kp.id);
        // Wrong key.
        sign_file(&other.secret, &img).unwrap();
        let e = verify_file(&trusted, &img).unwrap_err().to_string();
        assert!(e.contains("not trusted") && e.contains("img.sig"), "{e}");
        // Tampered.
        sign_file(&kp.secret, &img).unwrap();
        let mut b = std::fs::read(&img).unwrap();
        b[100] ^= 1;
        std::fs::write(&img, &b).unwrap();
        assert!(matches!(verify_file(&trusted, &img), Err(SigningError::Refused { .. })));
        // Garbled signature file: named, with the fix.
        std::fs::write(&sig, b"monarch-sig v1 ed25519 zz\n").unwrap();
        let e = verify_file(&trusted, &img).unwrap_err().to_string();
        assert!(e.contains("img.sig") && e.contains("monarch image sign"), "{e}");
        // A .sig path holding something else is never overwritten.
        std::fs::write(&sig, b"precious").unwrap();
        assert!(matches!(sign_file(&kp.secret, &img), Err(SigningError::NotASignature { .. })));
        assert_eq!(std::fs::read(&sig).unwrap(), b"precious");
        // A secret key given as a public key is refused, saying which file to use.
        let e = read_public_key(&kp.secret).unwrap_err().to_string();
        assert!(e.contains("k.key") && e.contains("NAME.pub"), "{e}");
    }

    #[test]
    fn the_secondary_check_by_policy() {
        let k = SecretKey::from_seed(&[3; 32]);
        let image = b"bytes held by the secondary";
        let d = ImageDigest::of(image);
        let rec = k.sign(&d).to_record().into_bytes();
        let trust = |policy| Trust { policy, keys: vec![k.public()] };
        assert_eq!(trust(SignaturePolicy::Off).check(None, &d), Ok(Verdict::Unchecked));
        assert_eq!(trust(SignaturePolicy::Optional).check(None, &d), Ok(Verdict::Unsigned));
        assert_eq!(trust(SignaturePolicy::Required).check(None, &d), Err(Refusal::Unsigned));
        assert_eq!(
            trust(SignaturePolicy::Required).check(Some(&rec), &d),
            Ok(Verdict::Signed(k.public().id()))
        );
        // Optional still refuses a bad signature: a signature that is there must verify.
        let other = ImageDigest::of(b"another image");
        assert!(matches!(
            trust(SignaturePolicy::Optional).check(Some(&rec), &other),
            Err(Refusal::Verify(_))
        ));
        assert!(matches!(
            trust(SignaturePolicy::Required).check(Some(&rec[..rec.len() - 2]), &d),
            Err(Refusal::Malformed(_))
        ));
        let t = trust(SignaturePolicy::Required);
        let p = t.kernel_params();
        let get = |k: &str| p.split_whitespace().find_map(|w| w.strip_prefix(k));
        assert_eq!(Trust::from_kernel_params(get("monarch.signature="), get("monarch.trust=")), Ok(t));
        assert_eq!(Trust::from_kernel_params(None, None), Ok(Trust::default()));
        assert!(Trust::from_kernel_params(Some("required"), None).is_err());
        assert!(Trust::from_kernel_params(Some("maybe"), None).is_err());
        assert!(Trust::from_kernel_params(Some("required"), Some("00")).is_err());
        let none = Trust { policy: SignaturePolicy::Required, keys: vec![] };
        assert!(matches!(none.check(Some(&rec), &d), Err(Refusal::Verify(VerifyError::Untrusted { .. }))));
    }
}
