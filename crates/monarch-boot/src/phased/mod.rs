//! The phased boot of a machine of many clusters (`[[cluster]]`): its binary hardware
//! description ([`describe`]), built from the topology; the memory banks and their handoff
//! record ([`bank`]); the monarch's side ([`boot`]) and each core's ([`core`]); and a model of
//! its boot time beside the flat boot's ([`simulate`], `monarch plan --simulate`).

pub mod bank;
pub mod boot;
pub mod core;
pub mod describe;
pub mod serve;
pub mod simulate;
