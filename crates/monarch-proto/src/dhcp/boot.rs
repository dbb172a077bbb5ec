//! Boot decisions: what kind of boot client sent a request (PXE or UEFI HTTP-boot firmware
//! by architecture, iPXE, or none), and which boot file or URL it gets
//! ([`BootConfig::choose`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use crate::dhcp::wire::{IPXE_ENCAP_OPTION, contains, opt_bytes};
use crate::mac::Mac;

/// Client architectures (option 93, RFC 4578 / IANA) monarch has default boot files for.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// EFI ia32.
    pub const EFI_IA32: u16 = 6;
    /// EFI x86-64.
    pub const EFI_X64: u16 = 7;
    /// EFI byte code (in practice x86-64 firmware that says so).
    pub const EFI_BC: u16 = 9;
    /// EFI 32-bit ARM.
    pub const EFI_ARM32: u16 = 10;
    /// EFI 64-bit ARM (aarch64).
    pub const EFI_ARM64: u16 = 11;
    /// EFI ia32 HTTP boot.
    pub const EFI_IA32_HTTP: u16 = 15;
    /// EFI x86-64 HTTP boot: the boot file is a URL, fetched by the firmware itself.
    pub const EFI_X64_HTTP: u16 = 16;
    /// EFI byte code HTTP boot.
    pub const EFI_BC_HTTP: u16 = 17;
    /// EFI 32-bit ARM HTTP boot.
    pub const EFI_ARM32_HTTP: u16 = 18;
    /// EFI 64-bit ARM HTTP boot.
    pub const EFI_ARM64_HTTP: u16 = 19;
    /// Architectures whose firmware boots over HTTP (ia32, x64, BC, ARM 32, ARM 64): they
    /// get a URL.
    pub const HTTP: [u16; 5] = [EFI_IA32_HTTP, EFI_X64_HTTP, EFI_BC_HTTP, EFI_ARM32_HTTP, EFI_ARM64_HTTP];
}

/// What kind of client sent a message, as far as booting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Not a network-boot client (an OS's DHCP client): address only.
    Plain,
    /// PXE or UEFI HTTP-boot firmware (option 60 `PXEClient…` / `HTTPClient…`).
    Pxe {
        /// Option 93 (or the `Arch:` field of option 60; BIOS when absent, as PXE says).
        arch: u16,
    },
    /// iPXE (user class `iPXE` or option 175): it gets its per-machine HTTP script.
    Ipxe {
        /// Its architecture, as for [`ClientKind::Pxe`].
        arch: u16,
    },
}

impl ClientKind {
    /// Classify a request.
    pub fn of(msg: &Message) -> ClientKind {
        let class = opt_bytes(msg, 60).unwrap_or_default();
        let pxe = class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient");
        let ipxe = opt_bytes(msg, 77).is_some_and(|u| contains(u, b"iPXE"))
            || msg.opts().contains(OptionCode::from(IPXE_ENCAP_OPTION));
        let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => a.0,
            // "PXEClient:Arch:00007:UNDI:003016": five decimal digits after "Arch:".
            _ => class
                .windows(5)
                .position(|w| w == b"Arch:")
                .and_then(|i| class.get(i + 5..i + 10))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse().ok())
                .unwrap_or(arch::BIOS),
        };
        if ipxe {
            ClientKind::Ipxe { arch }
        } else if pxe {
            ClientKind::Pxe { arch }
        } else {
            ClientKind::Plain
        }
    }

    /// A short name for events and logs: `plain`, `pxe-bios`, `pxe-efi-x64`, `ipxe`, ….
    pub fn label(&self) -> String {
        let a = |arch: u16| match arch {
            arch::BIOS => "bios".to_string(),
            arch::EFI_IA32 => "efi-ia32".to_string(),
            arch::EFI_X64 => "efi-x64".to_string(),
            arch::EFI_BC => "efi-bc".to_string(),
            arch::EFI_ARM32 => "efi-arm32".to_string(),
            arch::EFI_ARM64 => "efi-arm64".to_string(),
            arch::EFI_IA32_HTTP => "efi-ia32-http".to_string(),
            arch::EFI_X64_HTTP => "efi-x64-http".to_string(),
            arch::EFI_BC_HTTP => "efi-bc-http".to_string(),
            arch::EFI_ARM32_HTTP => "efi-arm32-http".to_string(),
            arch::EFI_ARM64_HTTP => "efi-arm64-http".to_string(),
            other => format!("arch{other}"),
        };
        match self {
            ClientKind::Plain => "plain".into(),
            ClientKind::Pxe { arch } => format!("pxe-{}", a(*arch)),
            ClientKind::Ipxe { .. } => "ipxe".into(),
        }
    }
}

/// Boot file names by client architecture (option 93). A name that is already a URL
/// (`http://…`) is sent as is; for HTTP-boot architectures ([`arch::HTTP`]) a plain name is
/// joined to [`BootConfig::http_base`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootfiles(pub BTreeMap<u16, String>);

impl Default for Bootfiles {
    /// iPXE's own images, so PXE firmware chain-loads iPXE, which then asks again as iPXE
    /// and gets its HTTP script, by CPU whether over TFTP or HTTP: BIOS `undionly.kpxe`,
    /// EFI ia32 `ipxe-ia32.efi`, EFI x64 and BC `ipxe.efi`, EFI ARM 64 `ipxe-arm64.efi`,
    /// EFI ARM 32 `ipxe-arm32.efi`.
    fn default() -> Self {
        Bootfiles(BTreeMap::from([
            (arch::BIOS, "undionly.kpxe".to_string()),
            (arch::EFI_IA32, "ipxe-ia32.efi".to_string()),
            (arch::EFI_X64, "ipxe.efi".to_string()),
            (arch::EFI_BC, "ipxe.efi".to_string()),
            (arch::EFI_ARM32, "ipxe-arm32.efi".to_string()),
            (arch::EFI_ARM64, "ipxe-arm64.efi".to_string()),
            (arch::EFI_IA32_HTTP, "ipxe-ia32.efi".to_string()),
            (arch::EFI_X64_HTTP, "ipxe.efi".to_string()),
            (arch::EFI_BC_HTTP, "ipxe.efi".to_string()),
            (arch::EFI_ARM32_HTTP, "ipxe-arm32.efi".to_string()),
            (arch::EFI_ARM64_HTTP, "ipxe-arm64.efi".to_string()),
        ]))
    }
}

/// What to tell boot clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The TFTP server: `siaddr` and option 66.
    pub tftp_server: Ipv4Addr,
    /// Base URL of the HTTP boot service (`http://10.0.0.1:8080`), for iPXE scripts and
    /// HTTP-boot firmware. Without it iPXE clients get a plain lease: handing them the PXE
    /// boot file instead would make iPXE chain-load itself forever.
    pub http_base: Option<String>,
    /// Boot file names per architecture.
    pub bootfiles: Bootfiles,
}

/// The boot options chosen for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// Boot file name or URL (option 67 and the `file` field when it fits).
    pub bootfile: String,
    /// Option 60 in the reply: `PXEClient`, or `HTTPClient` for UEFI HTTP boot (the
    /// firmware only accepts a URL from a reply that says so).
    pub vendor_class: &'static str,
}

impl BootConfig {
    fn base(&self) -> Option<&str> {
        self.http_base.as_deref().map(|b| b.trim_end_matches('/'))
    }

    /// The boot options for a client, or `None` (plain lease / nothing to boot).
    pub fn choose(&self, kind: ClientKind, mac: Mac) -> Option<Boot> {
        match kind {
            ClientKind::Plain => None,
            ClientKind::Ipxe { .. } => Some(Boot {
                bootfile: format!("{}/ipxe/{}.ipxe", self.base()?, mac.for_url()),
                vendor_class: "PXEClient",
            }),
            ClientKind::Pxe { arch } => {
                let file = self.bootfiles.0.get(&arch)?;
                let is_url = file.starts_with("http://") || file.starts_with("https://");
                if arch::HTTP.contains(&arch) {
                    let url = if is_url { file.clone() } else { format!("{}/{}", self.base()?, file) };
                    Some(Boot { bootfile: url, vendor_class: "HTTPClient" })
                } else {
                    Some(Boot { bootfile: file.clone(), vendor_class: "PXEClient" })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::wire::tests::{MAC, discover};

    #[test]
    fn arch_comes_from_the_vendor_class_when_option_93_is_missing() {
        let mut m = discover(MAC);
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()));
        assert_eq!(ClientKind::of(&m), ClientKind::Pxe { arch: 7 });
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        assert_eq!(ClientKind::of(&m), ClientKind::Pxe { arch: 0 });
    }

    #[test]
    fn arm_and_http_firmware_get_the_boot_file_of_their_cpu() {
        let cfg = BootConfig {
            tftp_server: Ipv4Addr::new(10, 0, 0, 1),
            http_base: Some("http://10.0.0.1:8080/".into()),
            bootfiles: Bootfiles::default(),
        };
        let cases = [
            (arch::EFI_ARM64, "ipxe-arm64.efi", "PXEClient", "pxe-efi-arm64"),
            (arch::EFI_ARM32, "ipxe-arm32.efi", "PXEClient", "pxe-efi-arm32"),
            (arch::EFI_ARM64_HTTP, "http://10.0.0.1:8080/ipxe-arm64.efi", "HTTPClient", "pxe-efi-arm64-http"),
            (arch::EFI_ARM32_HTTP, "http://10.0.0.1:8080/ipxe-arm32.efi", "HTTPClient", "pxe-efi-arm32-http"),
            (arch::EFI_X64_HTTP, "http://10.0.0.1:8080/ipxe.efi", "HTTPClient", "pxe-efi-x64-http"),
            (arch::EFI_IA32_HTTP, "http://10.0.0.1:8080/ipxe-ia32.efi", "HTTPClient", "pxe-efi-ia32-http"),
            (arch::EFI_X64, "ipxe.efi", "PXEClient", "pxe-efi-x64"),
        ];
        for (a, file, class, label) in cases {
            let kind = ClientKind::Pxe { arch: a };
            let boot = cfg.choose(kind, MAC).unwrap_or_else(|| panic!("no boot file for arch {a}"));
            assert_eq!((boot.bootfile.as_str(), boot.vendor_class), (file, class), "arch {a}");
            assert_eq!(kind.label(), label);
        }
        // An architecture nobody configured still gets nothing (and the event says why).
        assert_eq!(cfg.choose(ClientKind::Pxe { arch: 12 }, MAC), None);
    }
}
