//! PV frontend drivers: how the stub domain reaches the outside world (its PV disks,
//! its NIC, its consoles, QMP's vchan). Safe code, generic over the `xen_seams`
//! traits, so every ring and handshake is tested on the host against a simulated
//! backend before it meets dom0's real ones.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod blkfront;
pub mod blkif;
pub mod console;
pub mod netfront;
pub mod netif;
pub mod ring;
pub mod vchan;
pub mod xenbus;
