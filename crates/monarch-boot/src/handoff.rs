//! The handoff: what a secondary does with its image once the image is verified. One enum
//! for every place that names a kind (topology files, `monarch agent --handoff`, `monarch
//! netboot agent --handoff`, the window agent, the network agent) and one implementation of
//! each kind.
//!
//! Only verified bytes held in the secondary's own memory are handed off into: the window
//! agent copies the image out of the window while it checks it, the network agent receives
//! it into its pre-posted buffer, and a disk boot reads it back and checks it against its
//! slot record. Nothing the other side can still write is executed.
//!
//! Adding a kind: a variant here, its arm in [`Handoff::run`] (and its name in
//! [`Handoff::name`]); topology files and both agents' `--handoff` accept it from then on.
use monarch_drivers::memimage::MemImage;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the secondary does after its image is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Handoff {
    /// Execute the delivered bytes (sealed memfd, fexecve), replacing the agent; the running
    /// image reports RUNNING.
    #[value(help = "Execute the delivered bytes")]
    Exec,
    /// Stop after verification (exit 0): for firmware that jumps by itself, and for tests.
    #[value(help = "Exit after verification (the monarch's OK)")]
    None,
    /// The image is a kernel bundle (UKI): load its kernel, initrd and command line with
    /// `kexec_file_load` and reboot into it (inside a VM or on a secondary machine); the
    /// delivered system reports RUNNING.
    #[value(
        help = "Boot the delivered kernel bundle (UKI) with kexec (inside a VM or on a secondary machine)"
    )]
    Kexec,
}

/// Why a handoff did not happen. A handoff that happens does not return.
#[derive(Debug, Error)]
pub enum HandoffError {
    /// The verified image could not be executed.
    #[error("exec of the delivered image failed: {0}")]
    Exec(std::io::Error),
    /// The verified image could not be mapped to be read.
    #[error("cannot map the verified image to read it: {0}")]
    Map(std::io::Error),
    /// The verified image is not a kernel bundle, so it cannot be kexec'd.
    #[error("the verified image is not a kernel bundle: {0}")]
    NotABundle(crate::bundle::BundleError),
    /// The kernel refused to load the bundle's kernel.
    #[error(
        "kexec_file_load failed: {0} (the kernel needs CONFIG_KEXEC_FILE, the bundle's .linux must be a bzImage, and a kernel in lockdown only loads signed ones)"
    )]
    KexecLoad(std::io::Error),
    /// The loaded kernel could not be rebooted into.
    #[error("reboot into the delivered kernel failed: {0}")]
    KexecReboot(std::io::Error),
}

impl Handoff {
    /// Its name in topology files and on agents' command lines.
    pub fn name(self) -> &'static str {
        match self {
            Handoff::Exec => "exec",
            Handoff::None => "none",
            Handoff::Kexec => "kexec",
        }
    }

    /// Hand off into `image`, the verified bytes in this process's memory: `Ok` only for
    /// [`Handoff::None`]; every other kind replaces this process and returns only on failure.
    /// `name` is the program name an exec'd image gets, `env` what it finds added to its
    /// environment, and `say` gets a line for each step (the agent's log).
    pub fn run(
        self,
        image: MemImage,
        name: &str,
        env: &[(String, String)],
        say: &mut dyn FnMut(&str),
    ) -> Result<(), HandoffError> {
        match self {
            Handoff::None => Ok(()),
            Handoff::Exec => {
                say(&format!("handing off into the verified image ({} bytes)", image.len()));
                Err(HandoffError::Exec(image.exec(name, &[], env)))
            }
            Handoff::Kexec => {
                let bytes = image.bytes().map_err(HandoffError::Map)?;
                let b = crate::bundle::parse(bytes).map_err(HandoffError::NotABundle)?;
                say(&format!(
                    "kexec: loading the verified kernel ({} bytes) and initrd ({} bytes), cmdline {:?}",
                    b.linux.len(),
                    b.initrd.len(),
                    b.cmdline
                ));
                monarch_drivers::kexec::load(b.linux, b.initrd, &b.cmdline)
                    .map_err(HandoffError::KexecLoad)?;
                say(&format!(
                    "handing off: rebooting into the delivered kernel (kernel up {} s)",
                    monarch_drivers::host::uptime()
                ));
                Err(HandoffError::KexecReboot(monarch_drivers::kexec::reboot_into_loaded()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_kind_has_one_name_in_files_and_on_command_lines() {
        for h in Handoff::value_variants() {
            let on_cli = h.to_possible_value().unwrap();
            assert_eq!(on_cli.get_name(), h.name());
            let in_file: Handoff = serde_json::from_str(&format!("\"{}\"", h.name())).unwrap();
            assert_eq!(in_file, *h);
        }
    }

    #[test]
    fn none_returns_and_a_kexec_of_a_non_bundle_says_so_without_loading() {
        let mut lines = Vec::new();
        let img = MemImage::of("t", b"not a kernel").unwrap();
        assert!(Handoff::None.run(img, "t", &[], &mut |l| lines.push(l.to_string())).is_ok());
        let img = MemImage::of("t", b"not a kernel").unwrap();
        let e = Handoff::Kexec.run(img, "t", &[], &mut |l| lines.push(l.to_string())).unwrap_err();
        assert!(matches!(e, HandoffError::NotABundle(_)), "{e}");
        assert!(lines.is_empty(), "nothing loaded, nothing said: {lines:?}");
    }
}
