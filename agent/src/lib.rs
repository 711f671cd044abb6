//! meshdoctor-agent's library: everything the binary (`main.rs`: flags, the plan loop) runs,
//! one module per job, and what the fuzz targets (`fuzz/`) feed hostile bytes to: the probe
//! parsers ([`icmp`], [`udp`]) and the kernel layouts the drop tracer reads ([`drops`]).

pub mod app;
pub mod caps;
pub mod client;
pub mod drops;
pub mod guard;
pub mod hooks;
pub mod icmp;
pub mod interfaces;
pub mod map_sizes;
pub mod metrics;
pub mod observer;
pub mod round;
pub mod runtime;
pub mod sockets;
pub mod tcp;
#[cfg(test)]
mod testnet;
pub mod udp;
