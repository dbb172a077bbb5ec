//! DHCP and ProxyDHCP decisions, sans-IO: who gets which address, which boot file, and
//! what goes back on the wire.
//!
//! Two modes, one [`server::Server`]:
//! - **Full**: a [`pool::Pool`] of addresses with lease times, static reservations by MAC,
//!   and a lease table that the I/O layer persists.
//! - **Proxy** (PXE spec 2.1, §2.2.3): coexists with an existing DHCP server and never
//!   hands out an address; it answers PXE DISCOVERs on port 67 with boot options only, and
//!   REQUESTs on port 4011 with an ACK that carries the boot file.
//!
//! Boot decisions ([`boot::BootConfig::choose`]): option 93 picks the boot file (BIOS, EFI
//! ia32, EFI x64, EFI x64 HTTP), iPXE clients (user class `iPXE` or option 175) get an HTTP
//! URL to their per-machine script `{http_base}/ipxe/{mac}.ipxe`, and clients that are not
//! PXE get a plain lease.
//!
//! Time is an explicit `now` in seconds. The I/O layer passes Unix time, so the expiry
//! stamps in a persisted lease table stay meaningful across a restart.
//!
//! The files, each importing only those listed before it:
//! - [`wire`]: decode (with a pre-check for what dhcproto would choke on) and encode,
//!   the ports and limits, and requests as a client builds them.
//! - [`boot`]: the kind of boot client and the boot file or URL it gets.
//! - [`pool`]: the address pool and its lease table.
//! - [`server`]: the server's decision for each request.

pub mod boot;
pub mod pool;
pub mod server;
pub mod wire;
