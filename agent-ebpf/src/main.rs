//! TC observers for meshdoctor probe packets.
//!
//! `observe_ingress` and `observe_egress` are attached to both TC hooks of every interface the
//! agent probes from or to. They timestamp ICMP/ICMPv6 echo requests and replies and UDP probes
//! that carry a meshdoctor cookie of an armed round, and the SYN and SYN-ACK of TCP probes
//! (named by their 4-tuple), and ignore everything else after one or two packet loads.
//!
//! `trace_drops`, on the `skb:kfree_skb` tracepoint, reports the same probes when the kernel
//! frees them as a drop in this agent's network namespace, with the drop reason and location.
//! It reads kernel structs at offsets the agent resolved from BTF ([`DropLayout`]).
//!
//! They never change a packet's fate: they always return `TC_ACT_UNSPEC` (`TCX_NEXT`), because
//! `TC_ACT_OK` would end the TCX chain and skip every later program and legacy filter on the
//! device (docs/ebpf.md, "TC_ACT_OK ends the chain" and "Legacy tc filter priority").
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_ktime_get_ns, bpf_skb_load_bytes_relative},
    },
    macros::{classifier, map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TcContext, TracePointContext},
};
use meshdoctor_agent_common::{
    COOKIE_LEN, COOKIE_OFFSET, CounterKey, DEFAULT_EVENT_BUFFER_BYTES, DEFAULT_TCP_PATHS,
    DropLayout, Hook, IpFamily, Kind, NO_FIELD, PROBE_MAGIC, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    ProbeEvent, TCP_PORT_BASE, TcpPath, TcpPathKey, UDP_KIND_OFFSET, UNKNOWN_REASON, probe_id,
    probe_round_tag,
};

/// Probe events for user space. The agent sets its size at load: enough for its rate of
/// events over a tolerated reader stall.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_BUFFER_BYTES, 0);

/// Round tags whose probes are reported; user space arms and disarms rounds. Keeps stale or
/// foreign probes (another agent, an old round) out of the ring buffer.
#[map]
static ACTIVE_ROUNDS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// TCP probe paths of armed rounds; user space adds a round's paths when it arms it (the
/// source for its targets, the destination for the paths toward it) and removes them after.
/// The agent sets its size at load, from its plans.
#[map]
static TCP_PATHS: HashMap<TcpPathKey, TcpPath> = HashMap::with_max_entries(DEFAULT_TCP_PATHS, 0);

/// Probe packets seen per interface, hook, kind and family. Per-CPU so no atomics are needed.
#[map]
static COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// Events lost because the ring buffer was full (index 0).
#[map]
static RINGBUF_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Inode of the network namespace this instance is attached in, patched by the loader
/// (`EbpfLoader::set_global`): ifindex is only unique within a netns, and
/// `bpf_get_netns_cookie` reports the socket's netns, not the device's.
#[unsafe(no_mangle)]
static NETNS_ID: u32 = 0;

/// Kernel offsets for `trace_drops`, patched by the loader; all zero (and the program not
/// attached) when the agent could not resolve them.
#[unsafe(no_mangle)]
static DROP_LAYOUT: DropLayout = DropLayout {
    tp_skbaddr: 0,
    tp_location: 0,
    tp_protocol: 0,
    tp_reason: NO_FIELD,
    skb_head: 0,
    skb_network_header: 0,
    skb_dev: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_net: 0,
    sk_net: 0,
    net_inum: 0,
    reason_no_socket: NO_FIELD,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP: u8 = 6;
const UDP_HEADER_LEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Bound on the IPv6 extension-header walk; real probes carry none, but a hop-by-hop header
/// (e.g. MLD router alert) or a tunnel's dest-opts must not hide them.
const MAX_IPV6_EXT_HEADERS: usize = 4;
/// ICMP header (type, code, checksum, id, sequence) plus the cookie, read in one load.
const ICMP_READ_LEN: usize = COOKIE_OFFSET + COOKIE_LEN;
/// UDP header plus the cookie and the kind byte, read in one load.
const UDP_READ_LEN: usize = UDP_HEADER_LEN + UDP_KIND_OFFSET + 1;

#[classifier]
pub fn observe_ingress(ctx: TcContext) -> i32 {
    let _ = try_observe(&ctx, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn observe_egress(ctx: TcContext) -> i32 {
    let _ = try_observe(&ctx, Hook::Egress);
    TC_ACT_UNSPEC
}

/// Bytes of a packet from its network header on, however the program reaches them.
trait Packet {
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
}

/// A packet at a TC hook, read with `bpf_skb_load_bytes_relative` from the network header, so
/// the same code works on Ethernet, L3 (wireguard, ipip, tun) and VLAN devices.
struct TcPacket(*mut __sk_buff);

impl Packet for TcPacket {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let mut buf = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `buf` and reports
        // failure (out of bounds) with a negative return, in which case `buf` is not read.
        let ret = unsafe {
            bpf_skb_load_bytes_relative(
                self.0.cast_const().cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                size_of::<T>() as u32,
                BPF_HDR_START_NET,
            )
        };
        if ret == 0 {
            // SAFETY: the helper succeeded, so all bytes of `buf` are initialised; T is plain
            // bytes.
            Some(unsafe { buf.assume_init() })
        } else {
            None
        }
    }
}

/// A packet in kernel memory (`skb->head + skb->network_header`), read with
/// `bpf_probe_read_kernel`, which fails cleanly on a bad address.
struct KernelPacket(*const u8);

impl Packet for KernelPacket {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        read_kernel(self.0.wrapping_add(offset))
    }
}

/// Reads a `T` at a kernel address.
#[inline(always)]
fn read_kernel<T: Copy>(at: *const u8) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address and returns an error instead of
    // faulting; T is plain bytes.
    unsafe { bpf_probe_read_kernel(at.cast::<T>()) }.ok()
}

/// Reads the pointer-sized field at `base + offset` of a kernel struct.
#[inline(always)]
fn read_field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    read_kernel((base as *const u8).wrapping_add(offset as usize))
}

/// A probe packet of an armed round: its kind, transport and probe id.
struct Probe {
    kind: Kind,
    proto: u8,
    probe_id: u64,
}

/// Recognizes a probe of an armed round: an ICMP/ICMPv6 echo request or reply, or a UDP
/// datagram, carrying a meshdoctor cookie, or the SYN or SYN-ACK of a TCP probe path; `None`
/// for everything else, after a few loads.
#[inline(always)]
fn parse_probe<P: Packet>(pkt: &P, family: IpFamily) -> Option<Probe> {
    let (proto, l4) = match family {
        IpFamily::V4 => ipv4_l4(pkt)?,
        IpFamily::V6 => ipv6_l4(pkt)?,
    };
    let probe = match proto {
        IPPROTO_TCP => tcp_probe(pkt, family, l4)?,
        IPPROTO_UDP => {
            let udp = pkt.load::<[u8; UDP_READ_LEN]>(l4)?;
            let kind = match udp[UDP_HEADER_LEN + UDP_KIND_OFFSET] {
                0 => Kind::Request,
                1 => Kind::Reply,
                _ => return None,
            };
            let mut cookie = [0u8; COOKIE_LEN];
            cookie.copy_from_slice(&udp[UDP_HEADER_LEN..UDP_HEADER_LEN + COOKIE_LEN]);
            cookie_probe(kind, PROTO_UDP, cookie)?
        }
        _ => {
            let icmp = pkt.load::<[u8; ICMP_READ_LEN]>(l4)?;
            let kind = match (family, icmp[0]) {
                (IpFamily::V4, ICMP_ECHO_REQUEST) | (IpFamily::V6, ICMPV6_ECHO_REQUEST) => {
                    Kind::Request
                }
                (IpFamily::V4, ICMP_ECHO_REPLY) | (IpFamily::V6, ICMPV6_ECHO_REPLY) => Kind::Reply,
                _ => return None,
            };
            let mut cookie = [0u8; COOKIE_LEN];
            cookie.copy_from_slice(&icmp[COOKIE_OFFSET..COOKIE_OFFSET + COOKIE_LEN]);
            cookie_probe(kind, PROTO_ICMP, cookie)?
        }
    };
    ACTIVE_ROUNDS.get_ptr(probe_round_tag(probe.probe_id))?;
    Some(probe)
}

/// The probe a cookie names, if it has the magic.
#[inline(always)]
fn cookie_probe(kind: Kind, proto: u8, cookie: [u8; COOKIE_LEN]) -> Option<Probe> {
    let magic = u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
    if magic != PROBE_MAGIC {
        return None;
    }
    let probe_id = u64::from_be_bytes([
        cookie[4], cookie[5], cookie[6], cookie[7], cookie[8], cookie[9], cookie[10], cookie[11],
    ]);
    Some(Probe {
        kind,
        proto,
        probe_id,
    })
}

/// A TCP probe: a SYN (the request) or SYN-ACK (the reply) of a connection from a client port
/// in the probe range on a path of [`TCP_PATHS`]. The client port is `TCP_PORT_BASE + seq`.
/// Retransmitted SYNs are the same probe; every other segment (the handshake's ACK, data, the
/// client's closing reset, a refusal's reset) is not a probe packet.
#[inline(always)]
fn tcp_probe<P: Packet>(pkt: &P, family: IpFamily, l4: usize) -> Option<Probe> {
    // Ports, sequence and acknowledgment numbers, data offset and flags, in one load.
    let tcp = pkt.load::<[u8; 14]>(l4)?;
    let src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let (kind, client_port, server_port) = match tcp[13] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK) {
        TCP_SYN => (Kind::Request, src_port, dst_port),
        f if f == TCP_SYN | TCP_ACK => (Kind::Reply, dst_port, src_port),
        _ => return None,
    };
    let seq = client_port.checked_sub(TCP_PORT_BASE)?;
    let mut key = TcpPathKey {
        server_port,
        family: family as u8,
        ..TcpPathKey::default()
    };
    // The request goes client -> server, the reply server -> client.
    let (client, server) = match kind {
        Kind::Request => (&mut key.client, &mut key.server),
        Kind::Reply => (&mut key.server, &mut key.client),
    };
    match family {
        IpFamily::V4 => {
            let addrs = pkt.load::<[u8; 8]>(12)?;
            client[..4].copy_from_slice(&addrs[..4]);
            server[..4].copy_from_slice(&addrs[4..]);
        }
        IpFamily::V6 => {
            let addrs = pkt.load::<[u8; 32]>(8)?;
            client.copy_from_slice(&addrs[..16]);
            server.copy_from_slice(&addrs[16..]);
        }
    }
    // SAFETY: the value is plain data copied out before the map can change it.
    let path = unsafe { TCP_PATHS.get(&key) }?;
    Some(Probe {
        kind,
        proto: PROTO_TCP,
        probe_id: probe_id(path.round_tag, path.path, seq),
    })
}

/// The family of an ethertype (host byte order), if it is IP.
#[inline(always)]
fn family_of(ethertype: u16) -> Option<IpFamily> {
    match ethertype {
        ETH_P_IP => Some(IpFamily::V4),
        ETH_P_IPV6 => Some(IpFamily::V6),
        _ => None,
    }
}

/// Reports the packet if it is a probe of an armed round. Returns nothing: whatever happens,
/// the caller lets the packet continue unchanged.
#[inline(always)]
fn try_observe(ctx: &TcContext, hook: Hook) -> Option<()> {
    let skb = ctx.skb.skb;
    // skb->protocol is the ethertype in network byte order, after VLAN untagging.
    let family = family_of(u16::from_be(ctx.skb.protocol() as u16))?;
    let probe = parse_probe(&TcPacket(skb), family)?;
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*skb).ifindex };
    emit(ProbeEvent {
        probe_id: probe.probe_id,
        // SAFETY: plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        location: 0,
        netns: netns_id(),
        ifindex,
        reason: 0,
        hook: hook as u8,
        kind: probe.kind as u8,
        family: family as u8,
        proto: probe.proto,
    });
    count(CounterKey {
        ifindex,
        hook: hook as u8,
        kind: probe.kind as u8,
        family: family as u8,
        proto: probe.proto,
    });
    Some(())
}

/// This instance's netns inode.
#[inline(always)]
fn netns_id() -> u32 {
    // SAFETY: a plain static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(&NETNS_ID) }
}

#[tracepoint]
pub fn trace_drops(ctx: TracePointContext) -> u32 {
    let _ = try_trace_drop(&ctx);
    0
}

/// Reports a freed packet if it is a probe of an armed round dropped in this agent's netns.
#[inline(always)]
fn try_trace_drop(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: a plain static; volatile so the compiler keeps the loads the loader patches.
    let l = unsafe { core::ptr::read_volatile(&DROP_LAYOUT) };
    // SAFETY (all `read_at`): offsets come from the tracepoint's format file; the helper
    // behind read_at checks the access.
    let family = family_of(unsafe { ctx.read_at::<u16>(l.tp_protocol as usize) }.ok()?)?;
    let skb: u64 = unsafe { ctx.read_at(l.tp_skbaddr as usize) }.ok()?;
    let head: u64 = read_field(skb, l.skb_head)?;
    let network_header: u16 = read_field(skb, l.skb_network_header)?;
    // `(u16)~0U`: the stack has not set the network header yet, so this is no IP packet.
    if network_header == u16::MAX || head == 0 {
        return None;
    }
    let probe = parse_probe(
        &KernelPacket((head as *const u8).wrapping_add(usize::from(network_header))),
        family,
    )?;
    let reason = if l.tp_reason == NO_FIELD {
        UNKNOWN_REASON
    } else {
        unsafe { ctx.read_at::<u32>(l.tp_reason as usize) }.ok()?
    };
    if probe.kind == Kind::Reply && reason != UNKNOWN_REASON && reason == l.reason_no_socket {
        return None;
    }
    // The device's netns, or the socket's for a packet not on a device (e.g. dropped at
    // OUTPUT before routing put it on one).
    let dev: u64 = read_field(skb, l.skb_dev)?;
    let (net, ifindex) = if dev != 0 {
        (
            read_field::<u64>(dev, l.dev_net)?,
            read_field(dev, l.dev_ifindex)?,
        )
    } else {
        let sk: u64 = read_field(skb, l.skb_sk)?;
        (read_field::<u64>(sk, l.sk_net)?, 0)
    };
    let netns: u32 = read_field(net, l.net_inum)?;
    if netns != netns_id() {
        return None;
    }
    emit(ProbeEvent {
        probe_id: probe.probe_id,
        // SAFETY: plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        location: unsafe { ctx.read_at(l.tp_location as usize) }.unwrap_or(0),
        netns,
        ifindex,
        reason,
        hook: Hook::Drop as u8,
        kind: probe.kind as u8,
        family: family as u8,
        proto: probe.proto,
    });
    Some(())
}

/// Transport and offset of the transport header of an unfragmented (or first-fragment) IPv4
/// ICMP, UDP or TCP packet.
#[inline(always)]
fn ipv4_l4<P: Packet>(pkt: &P) -> Option<(u8, usize)> {
    // Bytes 0..10: version/IHL .. protocol, in one load.
    let hdr = pkt.load::<[u8; 10]>(0)?;
    if !matches!(hdr[9], IPPROTO_ICMP | IPPROTO_UDP | IPPROTO_TCP) {
        return None;
    }
    // A non-first fragment carries no transport header.
    if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    Some((hdr[9], ihl))
}

/// Transport and offset of the ICMPv6, UDP or TCP header after walking at most
/// [`MAX_IPV6_EXT_HEADERS`] extension headers.
#[inline(always)]
fn ipv6_l4<P: Packet>(pkt: &P) -> Option<(u8, usize)> {
    let mut next: u8 = pkt.load(6)?;
    let mut off = 40usize;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_ICMPV6 | IPPROTO_UDP | IPPROTO_TCP => return Some((next, off)),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext = pkt.load::<[u8; 2]>(off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let frag = pkt.load::<[u8; 4]>(off)?;
                // Only the first fragment (offset 0) carries the transport header.
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    return None;
                }
                next = frag[0];
                off += 8;
            }
            _ => return None,
        }
    }
    matches!(next, IPPROTO_ICMPV6 | IPPROTO_UDP | IPPROTO_TCP).then_some((next, off))
}

/// Sends the event to user space, counting it as dropped if the ring buffer is full.
#[inline(always)]
fn emit(event: ProbeEvent) {
    match EVENTS.reserve::<ProbeEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => {
            if let Some(drops) = RINGBUF_DROPS.get_ptr_mut(0) {
                // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
                unsafe { *drops += 1 };
            }
        }
    }
}

/// Increments this CPU's counter for `key`, creating it on first use.
#[inline(always)]
fn count(key: CounterKey) {
    if let Some(v) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *v += 1 };
        return;
    }
    // Another CPU may create the key between our lookup and insert; NOEXIST then fails and
    // the second lookup finds this CPU's zeroed slot.
    if COUNTERS.insert(key, 1u64, u64::from(BPF_NOEXIST)).is_err()
        && let Some(v) = COUNTERS.get_ptr_mut(key)
    {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *v += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
