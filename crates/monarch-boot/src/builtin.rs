//! The built-in demo payload image's format: the small `monarch-payload` program, padded to
//! the requested size, then a banner and a trailer. Nothing here depends on the rest of the
//! crate, so topology resolution can size a `builtin:payload` without the image module.

use std::path::PathBuf;

/// Last 8 bytes of a payload image.
pub const TRAILER_MAGIC: &[u8; 8] = b"MNRCHPLD";
/// Trailer length: banner length (u32 LE), reserved (u32), magic.
pub const TRAILER_LEN: usize = 16;
/// Longest banner.
pub const BANNER_MAX: usize = 160;

/// Where the demo payload program is: `$MONARCH_PAYLOAD`, or next to the running binary.
pub fn payload_program() -> PathBuf {
    if let Some(p) = std::env::var_os("MONARCH_PAYLOAD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("monarch"));
    exe.with_file_name("monarch-payload")
}

/// The smallest demo payload image of a `program`-byte program carrying `banner`.
pub fn payload_len(program: u64, banner: &str) -> u64 {
    program + (truncate(banner, BANNER_MAX).len() + TRAILER_LEN) as u64
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The banner in a payload image's trailer, if it has one (input is untrusted).
pub fn read_banner(image: &[u8]) -> Option<String> {
    let t = image.len().checked_sub(TRAILER_LEN)?;
    if &image[t + 8..] != TRAILER_MAGIC {
        return None;
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&image[t..t + 4]);
    let len = usize::try_from(u32::from_le_bytes(len)).ok()?.min(BANNER_MAX);
    let start = t.checked_sub(len)?;
    Some(String::from_utf8_lossy(&image[start..t]).into_owned())
}
