//! The phased boot of a machine of many clusters (`[[cluster]]`): its binary hardware
//! description ([`describe`]), built from the topology.

pub mod bank;
pub mod boot;
pub mod core;
pub mod describe;
pub mod serve;
