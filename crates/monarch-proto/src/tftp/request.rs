//! What a read-only TFTP server answers to a request before it opens anything: the lexical
//! check of the requested path, and the refusal (with the TFTP error to send) of writes,
//! netascii and bad paths.

use std::fmt;

use crate::tftp::wire::{ErrorCode, Mode, Packet};

/// Why a requested path is refused before the file system is even asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing asked for.
    #[error("empty filename")]
    Empty,
    /// Starts with `/` or `\`.
    #[error("absolute path refused: ask for a path relative to the TFTP root")]
    Absolute,
    /// Has a `..` component.
    #[error("`..` in the path refused: files outside the TFTP root are not served")]
    ParentDir,
    /// Has a NUL or another control character.
    #[error("control character in the path refused")]
    ControlChar,
}

/// Check a requested filename lexically and return it normalised: relative, components
/// joined by `/`, no empty or `.` components. Both `/` and `\` count as separators, so a
/// Windows-style `boot\pxe.0` works and `..\..\etc` is caught like `../../etc`. This is
/// only the first fence: the server must still resolve the result beneath its root without
/// following symlinks out of it.
pub fn check_path(name: &str) -> Result<String, PathError> {
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if name.starts_with(['/', '\\']) {
        return Err(PathError::Absolute);
    }
    let mut out = String::with_capacity(name.len());
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::ParentDir),
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// A request the server will not serve, with the TFTP error to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code to send.
    pub code: ErrorCode,
    /// The message to send (and log): what is wrong and what to do instead.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TFTP error {} ({:?}): {}", self.code.code(), self.code, self.message)
    }
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

/// What a read-only server answers to a request before opening anything: the normalised
/// path to open, or the refusal. WRQ → access violation (read-only); a mode other than
/// octet → illegal operation (netascii would alter the image's bytes); a bad path → access
/// violation.
pub fn check_read_request(packet: &Packet<'_>) -> Result<String, Refusal> {
    let req = match packet {
        Packet::Rrq(r) => r,
        Packet::Wrq(_) => {
            return Err(Refusal::new(
                ErrorCode::AccessViolation,
                "this TFTP server is read-only: writes are refused",
            ));
        }
        _ => return Err(Refusal::new(ErrorCode::IllegalOperation, "expected a read request (RRQ)")),
    };
    if req.mode != Mode::Octet {
        return Err(Refusal::new(
            ErrorCode::IllegalOperation,
            format!("mode {} is not served: use octet (binary) mode", req.mode.as_str()),
        ));
    }
    check_path(req.filename).map_err(|e| Refusal::new(ErrorCode::AccessViolation, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::wire::tests::rrq;
    use crate::tftp::wire::{encode_request, parse};
    use proptest::prelude::*;

    #[test]
    fn path_check() {
        assert_eq!(check_path("pxelinux.0").as_deref(), Ok("pxelinux.0"));
        assert_eq!(check_path("./boot//x86\\wds.com").as_deref(), Ok("boot/x86/wds.com"));
        assert_eq!(check_path("a/...").as_deref(), Ok("a/..."));
        assert_eq!(check_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(check_path("\\windows"), Err(PathError::Absolute));
        assert_eq!(check_path("../x"), Err(PathError::ParentDir));
        assert_eq!(check_path("a/../../x"), Err(PathError::ParentDir));
        assert_eq!(check_path("a\\..\\..\\x"), Err(PathError::ParentDir));
        assert_eq!(check_path(""), Err(PathError::Empty));
        assert_eq!(check_path("./"), Err(PathError::Empty));
        assert_eq!(check_path("a\u{1}b"), Err(PathError::ControlChar));
        assert_eq!(check_path("a\0b"), Err(PathError::ControlChar));
    }

    #[test]
    fn read_requests_are_checked() {
        let ok = rrq(&[]);
        assert_eq!(check_read_request(&parse(&ok).unwrap()).as_deref(), Ok("boot/img"));
        let mut w = Vec::new();
        encode_request(true, "x", Mode::Octet, &[], &mut w);
        assert_eq!(check_read_request(&parse(&w).unwrap()).unwrap_err().code, ErrorCode::AccessViolation);
        let n = parse(b"\0\x01x\0netascii\0").unwrap();
        assert_eq!(check_read_request(&n).unwrap_err().code, ErrorCode::IllegalOperation);
        let p = parse(b"\0\x01../x\0octet\0").unwrap();
        assert_eq!(check_read_request(&p).unwrap_err().code, ErrorCode::AccessViolation);
    }

    proptest! {
        /// The path check never yields anything absolute or with a `..` component.
        #[test]
        fn checked_paths_stay_beneath(name in "[a-z./\\\\]{0,30}") {
            if let Ok(p) = check_path(&name) {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(p.split('/').all(|c| c != ".." && c != "." && !c.is_empty()));
            }
        }
    }
}
