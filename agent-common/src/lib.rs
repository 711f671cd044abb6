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
/// UDP probes carry the cookie at the start of the payload, then one byte: [`Kind`]. The
/// agent's UDP responder echoes the datagram with the kind set to reply.
pub const UDP_KIND_OFFSET: usize = COOKIE_LEN;
/// Where a probe's nonce sits, from the start of its cookie, in ICMP and UDP probes alike: a
/// random number of the socket that sent it, echoed back with the payload. The probe id is
/// predictable (round tag, path, sequence), so the sender takes a reply only when it carries
/// the nonce (and comes from the probed address): a host that never saw the request cannot
/// forge one. The observers do not read it.
pub const NONCE_OFFSET: usize = UDP_KIND_OFFSET + 1;
pub const NONCE_LEN: usize = 8;

/// Writes `nonce` into a probe payload that starts at the cookie; a payload too short for it
/// is left as it is.
pub fn put_nonce(payload: &mut [u8], nonce: u64) {
    if let Some(at) = payload.get_mut(NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN) {
        at.copy_from_slice(&nonce.to_be_bytes());
    }
}

/// The nonce of a probe payload that starts at the cookie, if it is long enough to hold one.
pub fn nonce_of(payload: &[u8]) -> Option<u64> {
    let bytes = payload.get(NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(bytes);
    Some(u64::from_be_bytes(nonce))
}
/// Transport of a probe, as in the IP header: ICMP (either family's), TCP or UDP.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// TCP probes leave from port `TCP_PORT_BASE + seq` (`api::TCP_PROBE_PORT_BASE`); a SYN or
/// SYN-ACK whose client port is outside the range is no probe.
pub const TCP_PORT_BASE: u16 = 61440;

/// A pair-path's index within its round, unique per round: 32 bits, so that no mesh a probe
/// budget allows (5,000 nodes x 2 interfaces x 2 families is 100 million pair-paths) runs out.
pub type PathId = u32;

/// The probe id: 64 bits that name a probe in every packet's cookie (and, for TCP, in the
/// observers' path lookup): the low 16 bits of the round tag on top ([`probe_tag`]), then the
/// pair-path index (32), then the probe's sequence number within its path (16). Defined once
/// here because the eBPF programs, the agent and the API all build or split ids.
///
/// 16 bits of the round tag tell apart the rounds an agent has armed at once: tags are handed
/// out one after the other and a round is armed for minutes at most, so two rounds armed
/// together are never 65,536 tags apart. The observers only ever test that part, to drop
/// probes of rounds that are not armed; the agent and the controller's plans split the rest.
pub const fn probe_id(round_tag: u32, path: PathId, seq: u16) -> u64 {
    ((probe_tag(round_tag) as u64) << 48) | ((path as u64) << 16) | seq as u64
}

/// The part of a round tag its probes carry, by which the observers arm the round.
pub const fn probe_tag(round_tag: u32) -> u32 {
    round_tag & 0xffff
}

/// The ([`probe_tag`], path, sequence) of a [`probe_id`].
pub const fn probe_id_parts(id: u64) -> (u32, PathId, u16) {
    ((id >> 48) as u32, (id >> 16) as u32, id as u16)
}

/// The [`probe_tag`] of a [`probe_id`], the one part the observers test.
pub const fn probe_round_tag(id: u64) -> u32 {
    (id >> 48) as u32
}

/// Most probes one pair-path carries in one round: the sequence number is 16 bits.
pub const MAX_PROBES_PER_PATH: u32 = 1 << 16;
/// Most pair-paths one round carries: the path index is 32 bits.
pub const MAX_PATHS: u64 = 1 << 32;

/// Ring buffer of [`ProbeEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// `HashMap<u32 probe tag, u8>`: the rounds whose probes the observers report, by
/// [`probe_tag`].
pub const MAP_ACTIVE_ROUNDS: &str = "ACTIVE_ROUNDS";
/// `HashMap<TcpPathKey, TcpPath>`: the TCP probe paths of armed rounds, by 4-tuple minus the
/// client port (which carries the sequence number).
pub const MAP_TCP_PATHS: &str = "TCP_PATHS";
/// The event ring buffer's size as the object declares it; the agent loads it at its own size
/// and grows it from plans.
pub const DEFAULT_EVENT_BUFFER_BYTES: u32 = 256 << 10;
/// The TCP paths map's entries as the object declares them; the agent loads it at its own
/// size and grows it from plans.
pub const DEFAULT_TCP_PATHS: u32 = 16384;
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
/// Program attached to the `skb:kfree_skb` tracepoint.
pub const PROG_DROPS: &str = "trace_drops";
/// Global (`.rodata`) [`DropLayout`]: where the drop tracer finds what it reads.
pub const GLOBAL_DROP_LAYOUT: &str = "DROP_LAYOUT";
/// A [`DropLayout`] field the running kernel does not have (e.g. `reason` before 5.17).
pub const NO_FIELD: u32 = u32::MAX;
/// [`ProbeEvent::reason`] when the kernel's tracepoint carries no drop reason.
pub const UNKNOWN_REASON: u32 = u32::MAX;

/// Which TC hook saw the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
    /// Freed as a drop (`skb:kfree_skb`), not a TC hook.
    Drop = 2,
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

/// One probe packet seen at one hook, or dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    pub probe_id: u64,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ktime_ns: u64,
    /// [`Hook::Drop`] only: the kernel address that freed the packet (tracepoint `location`).
    pub location: u64,
    /// Network namespace inode of the observer instance.
    pub netns: u32,
    /// The interface the packet is on, within `netns`; 0 for a drop of a packet not yet (or no
    /// longer) on a device.
    pub ifindex: u32,
    /// [`Hook::Drop`] only: the kernel's `enum skb_drop_reason` value, or [`UNKNOWN_REASON`].
    pub reason: u32,
    /// [`Hook`] as u8.
    pub hook: u8,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// [`IpFamily`] as u8.
    pub family: u8,
    /// [`PROTO_ICMP`], [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
}

/// Bytes one [`ProbeEvent`] takes in the ring buffer: the event and the ring buffer's 8-byte
/// record header, 8-byte aligned. The agent sizes the buffer and says what stall it covers
/// with it.
pub const EVENT_RECORD_BYTES: u64 =
    (core::mem::size_of::<ProbeEvent>() as u64 + 8).next_multiple_of(8);

/// Where the drop tracer finds what it reads, resolved by the agent for the running kernel:
/// Rust eBPF has no CO-RE, so the agent reads the tracepoint's format file and the kernel's BTF
/// and patches these byte offsets in as a global before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropLayout {
    /// Offsets of the tracepoint's fields in its raw record.
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    /// `protocol`: the ethertype in host byte order.
    pub tp_protocol: u32,
    /// [`NO_FIELD`] on kernels without drop reasons.
    pub tp_reason: u32,
    /// `struct sk_buff` members.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    /// `struct net_device` members: `ifindex` and `nd_net.net`.
    pub dev_ifindex: u32,
    pub dev_net: u32,
    /// `struct sock`: `__sk_common.skc_net.net`.
    pub sk_net: u32,
    /// `struct net`: `ns.inum`.
    pub net_inum: u32,
    /// `SKB_DROP_REASON_NO_SOCKET`: every echo reply to a raw ICMP socket is delivered to the
    /// socket's clone and the original freed with it, so it is noise, not a drop.
    /// [`NO_FIELD`] when the kernel has no such reason.
    pub reason_no_socket: u32,
}

/// A TCP probe path as the observers look it up: client address, server address (IPv4 in the
/// first four bytes, the rest zero) and server port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpPathKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    /// Host byte order.
    pub server_port: u16,
    /// [`IpFamily`] as u8.
    pub family: u8,
    pub _pad: u8,
}

/// Which round and path a TCP probe 4-tuple belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpPath {
    pub round_tag: u32,
    pub path: PathId,
}

/// Key of the per-interface counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    pub hook: u8,
    pub kind: u8,
    pub family: u8,
    /// [`PROTO_ICMP`], [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), plain integers, no padding left implicit.
    unsafe impl aya::Pod for super::ProbeEvent {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::DropLayout {}
    unsafe impl aya::Pod for super::TcpPathKey {}
    unsafe impl aya::Pod for super::TcpPath {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_id_round_trips() {
        let id = probe_id(0xdead_beef, 0xfedc_ba98, 65535);
        assert_eq!(probe_id_parts(id), (0xbeef, 0xfedc_ba98, 65535));
        assert_eq!(probe_round_tag(id), probe_tag(0xdead_beef));
        // Rounds armed together differ in their probe tags.
        assert_ne!(probe_tag(0x1_0000), probe_tag(0x1_0001));
    }
}
