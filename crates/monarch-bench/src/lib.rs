//! # monarch-bench: measurements beside their references
//!
//! Every `monarch bench …` harness lives here, apart from the product: nothing in
//! `monarch-boot` calls into it. Each bench drives the real thing (`monarch up`, real agents,
//! our network servers) and measures a reference in the same run (memcpy bandwidth,
//! tftpd-hpa, nginx, QEMU's iPXE), then prints both and their ratio.
//!
//! - [`window`]: delivery through memory windows beside memcpy into a shared mapping.
//! - [`baseline`]: the classic path (BIOS and TFTP with 512-byte blocks) beside the window.
//! - [`netboot`]: our TFTP and HTTP servers beside tftpd-hpa and nginx, with the reference
//!   servers' drivers and the network namespaces they run in.
//! - [`vm`]: a QEMU VM's start to its delivered kernel running, window beside iPXE.
//! - [`failover`]: the monarch killed or paused at random points of a boot.
//! - [`recovery`]: a supervised chassis's running images killed at random, recovered.
//! - [`clusters`]: a machine of clusters booted in phases beside flat, and the model's
//!   prediction (`monarch plan --simulate`) calibrated in the same run.
//! - [`cli`]: the command line of all of them.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod cli;
pub mod clusters;
pub mod failover;
pub mod netboot;
pub mod recovery;
pub mod run;
pub mod up;
pub mod vm;
pub mod window;
