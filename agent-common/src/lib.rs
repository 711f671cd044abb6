//! Layouts shared by the eBPF observers (`meshdoctor-agent-ebpf`) and the agent that loads them.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it, user space reads it.
#![no_std]

/// First four payload bytes of every probe (after the ICMP header), big-endian "MDPB".
pub const PROBE_MAGIC: u32 = 0x4d44_5042;
/// Offset of the cookie (magic, then the 64-bit big-endian probe id) from the ICMP header.
pub const COOKIE_OFFSET: usize = 8;
/// Cookie length: magic (4) + probe id (8).
pub const COOKIE_LEN: usize = 12;

/// Ring buffer of [`ProbeEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// `HashMap<u32 round tag, u8>`: the rounds whose probes the observers report.
pub const MAP_ACTIVE_ROUNDS: &str = "ACTIVE_ROUNDS";
/// `PerCpuHashMap<CounterKey, u64>`: probe packets seen per interface, hook, kind and family.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// `PerCpuArray<u64>` of length 1: events lost because the ring buffer was full.
pub const MAP_RINGBUF_DROPS: &str = "RINGBUF_DROPS";
/// Global (`.rodata`) `u32`: the network namespace inode the observer instance is attached in.
pub const GLOBAL_NETNS_ID: &str = "NETNS_ID";
/// Program attached at TC ingress.
pub const PROG_INGRESS: &str = "observe_ingress";
/// Program attached at TC egress.
pub const PROG_EGRESS: &str = "observe_egress";

/// Which TC hook saw the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
}

/// Echo request or echo reply.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 0,
    Reply = 1,
}

/// IP family of the packet, as in `api::Family`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4 = 4,
    V6 = 6,
}

/// One probe packet seen at one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    pub probe_id: u64,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ktime_ns: u64,
    /// Network namespace inode of the observer instance.
    pub netns: u32,
    /// `skb->ifindex`: the interface the packet is on, within `netns`.
    pub ifindex: u32,
    /// [`Hook`] as u8.
    pub hook: u8,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// [`IpFamily`] as u8.
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Key of the per-interface counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    pub hook: u8,
    pub kind: u8,
    pub family: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), plain integers, no padding left implicit.
    unsafe impl aya::Pod for super::ProbeEvent {}
    unsafe impl aya::Pod for super::CounterKey {}
}
