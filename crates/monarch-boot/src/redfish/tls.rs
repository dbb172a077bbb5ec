//! The Redfish service's HTTPS identity: the operator's certificate and key, or a self-signed
//! pair monarch makes once and keeps in the chassis's state folder.
//!
//! Clients cannot verify a self-signed certificate against a CA; the operator pins it by the
//! SHA-256 fingerprint monarch prints ([`Identity::fingerprint_sha256`], the same text as
//! `openssl x509 -noout -fingerprint -sha256 -in STATE_DIR/redfish-cert.pem`), or gives a
//! certificate of their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The file, in the state folder, of the self-signed certificate.
pub const CERT_FILE: &str = "redfish-cert.pem";
/// The file, in the state folder, of its private key (mode 0600).
pub const KEY_FILE: &str = "redfish-key.pem";
/// The command-line flag that gives a certificate chain, as the errors name it.
pub const CERT_FLAG: &str = "--redfish-cert";
/// The command-line flag that gives its private key, as the errors name it.
pub const KEY_FLAG: &str = "--redfish-key";
/// The subject's common name of a self-signed certificate.
pub const COMMON_NAME: &str = "monarch Redfish service";

/// A TLS server identity, ready to serve.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The server configuration (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate file (given, or in the state folder).
    pub cert_path: PathBuf,
    /// Whether the certificate was made now (a new self-signed pair was written).
    pub made: bool,
    /// SHA-256 of the leaf certificate's DER, upper-case hex pairs joined by colons.
    pub fingerprint_sha256: String,
}

/// Why there is no TLS identity, naming the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate without its key, or a key without its certificate.
    #[error(
        "{given} was given without {missing}: give both (the PEM certificate chain and its private key), \
         or neither for a self-signed certificate kept in the state folder"
    )]
    HalfGiven {
        /// The flag given.
        given: &'static str,
        /// The flag missing.
        missing: &'static str,
    },
    /// A certificate file that cannot be read or holds no certificate.
    #[error("no certificate from {}: {reason}; give a PEM file of the chain, leaf first (-----BEGIN CERTIFICATE-----)", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file that cannot be read or holds no private key.
    #[error("no private key from {}: {reason}; give a PEM file of the key (PKCS#8, RSA or EC)", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate and key rustls refuses together (most often: not a pair).
    #[error("{} and {} do not make a TLS identity: {source}; check the key is the certificate's{hint}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why (boxed: rustls' error is large).
        source: Box<rustls::Error>,
        /// How to start again, for monarch's own pair.
        hint: String,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The state folder or a file in it cannot be written.
    #[error("cannot write {}: {source}; make the state folder writable, or give {CERT_FLAG} and {KEY_FLAG}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The HTTPS identity: `cert` and `key` (PEM) when given, else the self-signed pair in
/// `state_dir` ([`CERT_FILE`], [`KEY_FILE`]), made there (with the folder) if either is
/// missing.
pub fn identity(cert: Option<&Path>, key: Option<&Path>, state_dir: &Path) -> Result<Identity, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => load(c, k, false, ""),
        (Some(_), None) => Err(TlsError::HalfGiven { given: CERT_FLAG, missing: KEY_FLAG }),
        (None, Some(_)) => Err(TlsError::HalfGiven { given: KEY_FLAG, missing: CERT_FLAG }),
        (None, None) => {
            let (c, k) = (state_dir.join(CERT_FILE), state_dir.join(KEY_FILE));
            let hint = format!(" (remove {} and {} to make a new pair)", c.display(), k.display());
            if c.exists() && k.exists() {
                return load(&c, &k, false, &hint);
            }
            make(&c, &k, state_dir)?;
            load(&c, &k, true, &hint)
        }
    }
}

fn load(cert: &Path, key: &Path, made: bool, hint: &str) -> Result<Identity, TlsError> {
    let cert_err = |reason: String| TlsError::Cert { path: cert.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err("the file holds no CERTIFICATE block".to_owned()));
    };
    let fingerprint_sha256 = fingerprint(leaf);
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "the file holds no PRIVATE KEY block".to_owned(),
            e => e.to_string(),
        },
    })?;
    let pair = |source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source: Box::new(source),
        hint: hint.to_owned(),
    };
    // rustls 0.23.48 deprecates its ring provider (no post-quantum key exchange); the other,
    // aws-lc-rs, needs cmake and a C toolchain this build avoids. ring's is still supported.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity { config: Arc::new(config), cert_path: cert.to_owned(), made, fingerprint_sha256 })
}

/// SHA-256 of `cert`, as `openssl x509 -fingerprint -sha256` prints it: `AB:CD:…`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The names a self-signed certificate is made for: the loopback names and this host's name.
pub fn self_signed_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let dns = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if dns && !names.iter().any(|n| n.eq_ignore_ascii_case(&host)) {
        names.push(host.into_owned());
    }
    names
}

/// Make a self-signed ECDSA P-256 pair and write it: the key (mode 0600) first, then the
/// certificate, each atomically.
fn make(cert: &Path, key: &Path, state_dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|source| TlsError::Write { path: state_dir.to_owned(), source })?;
    let mut params = rcgen::CertificateParams::new(self_signed_names())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, COMMON_NAME);
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let made = params.self_signed(&pair)?;
    monarch_drivers::fs::write_atomically_with_mode(key, pair.serialize_pem().as_bytes(), 0o600)
        .map_err(|source| TlsError::Write { path: key.to_owned(), source })?;
    monarch_drivers::fs::write_atomically_with_mode(cert, made.pem().as_bytes(), 0o644)
        .map_err(|source| TlsError::Write { path: cert.to_owned(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is the failure report
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
    }

    #[test]
    fn made_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state").join("chassis");
        let first = identity(None, None, &state).unwrap();
        assert!(first.made);
        assert_eq!(first.cert_path, state.join(CERT_FILE));
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600, "the key is its owner's alone");
        assert_eq!(first.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(first.fingerprint_sha256.len(), 32 * 3 - 1, "{}", first.fingerprint_sha256);
        let pem = std::fs::read_to_string(&first.cert_path).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

        let second = identity(None, None, &state).unwrap();
        assert!(!second.made);
        assert_eq!(second.fingerprint_sha256, first.fingerprint_sha256);

        // The operator's own files, given by path.
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::copy(state.join(CERT_FILE), &c).unwrap();
        std::fs::copy(state.join(KEY_FILE), &k).unwrap();
        let given = identity(Some(&c), Some(&k), dir.path()).unwrap();
        assert!(!given.made);
        assert_eq!(given.cert_path, c);
        assert_eq!(given.fingerprint_sha256, first.fingerprint_sha256);
    }

    #[test]
    fn half_given_missing_and_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        identity(None, None, &a).unwrap();
        identity(None, None, &b).unwrap();
        let cert = a.join(CERT_FILE);
        let e = identity(Some(&cert), None, dir.path()).unwrap_err().to_string();
        assert!(e.contains(KEY_FLAG) && e.starts_with(CERT_FLAG), "{e}");
        let e = identity(None, Some(&cert), dir.path()).unwrap_err().to_string();
        assert!(e.starts_with(KEY_FLAG) && e.contains(CERT_FLAG), "{e}");

        let nope = dir.path().join("nope.pem");
        let e = identity(Some(&nope), Some(&a.join(KEY_FILE)), dir.path()).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let e =
            identity(Some(&a.join(KEY_FILE)), Some(&a.join(KEY_FILE)), dir.path()).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let e = identity(Some(&cert), Some(&cert), dir.path()).unwrap_err().to_string();
        assert!(e.contains("no PRIVATE KEY block"), "{e}");
        let e = identity(Some(&cert), Some(&b.join(KEY_FILE)), dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::Pair { .. }), "{e}");
    }

    #[test]
    fn the_names_include_loopback() {
        let names = self_signed_names();
        assert!(
            names.starts_with(&["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]),
            "{names:?}"
        );
    }
}
