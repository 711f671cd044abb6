//! TC observers for meshdoctor probe packets.
//!
//! `observe_ingress` and `observe_egress` are attached to both TC hooks of every interface the
//! agent probes from or to. They timestamp ICMP/ICMPv6 echo requests and replies that carry a
//! meshdoctor cookie of an armed round, and ignore everything else after one or two packet loads.
//!
//! They never change a packet's fate: they always return `TC_ACT_UNSPEC` (`TCX_NEXT`), because
//! `TC_ACT_OK` would end the TCX chain and skip every later program and legacy filter on the
//! device (research/ebpf.md, pitfalls 2 and 3).
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes_relative},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use meshdoctor_agent_common::{
    COOKIE_LEN, COOKIE_OFFSET, CounterKey, Hook, IpFamily, Kind, PROBE_MAGIC, ProbeEvent,
};

/// Probe events for user space. 256 KiB holds ~6500 events: a few seconds of a busy round even
/// if the agent stalls briefly.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Round tags whose probes are reported; user space arms and disarms rounds. Keeps stale or
/// foreign probes (another agent, an old round) out of the ring buffer.
#[map]
static ACTIVE_ROUNDS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

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

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
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

#[classifier]
pub fn observe_ingress(ctx: TcContext) -> i32 {
    try_observe(&ctx, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn observe_egress(ctx: TcContext) -> i32 {
    try_observe(&ctx, Hook::Egress);
    TC_ACT_UNSPEC
}

/// Reads `T` at `offset` from the network header, so the same code works on Ethernet, L3
/// (wireguard, ipip, tun) and VLAN devices.
#[inline(always)]
fn load_net<T: Copy>(skb: *mut __sk_buff, offset: usize) -> Option<T> {
    let mut buf = MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `buf` and reports failure
    // (out of bounds) with a negative return, in which case `buf` is not read.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb.cast_const().cast(),
            offset as u32,
            buf.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            BPF_HDR_START_NET,
        )
    };
    if ret == 0 {
        // SAFETY: the helper succeeded, so all bytes of `buf` are initialised; T is plain bytes.
        Some(unsafe { buf.assume_init() })
    } else {
        None
    }
}

/// Reports the packet if it is a probe of an armed round. Returns nothing: whatever happens,
/// the caller lets the packet continue unchanged.
#[inline(always)]
fn try_observe(ctx: &TcContext, hook: Hook) {
    let skb = ctx.skb.skb;
    // skb->protocol is the ethertype in network byte order, after VLAN untagging.
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let (family, l4) = match proto {
        ETH_P_IP => match ipv4_icmp_offset(skb) {
            Some(off) => (IpFamily::V4, off),
            None => return,
        },
        ETH_P_IPV6 => match ipv6_icmp_offset(skb) {
            Some(off) => (IpFamily::V6, off),
            None => return,
        },
        _ => return,
    };
    let Some(icmp) = load_net::<[u8; ICMP_READ_LEN]>(skb, l4) else {
        return;
    };
    let kind = match (family, icmp[0]) {
        (IpFamily::V4, ICMP_ECHO_REQUEST) | (IpFamily::V6, ICMPV6_ECHO_REQUEST) => Kind::Request,
        (IpFamily::V4, ICMP_ECHO_REPLY) | (IpFamily::V6, ICMPV6_ECHO_REPLY) => Kind::Reply,
        _ => return,
    };
    let magic = u32::from_be_bytes([icmp[8], icmp[9], icmp[10], icmp[11]]);
    if magic != PROBE_MAGIC {
        return;
    }
    let probe_id = u64::from_be_bytes([
        icmp[12], icmp[13], icmp[14], icmp[15], icmp[16], icmp[17], icmp[18], icmp[19],
    ]);
    let round_tag = (probe_id >> 32) as u32;
    if ACTIVE_ROUNDS.get_ptr(round_tag).is_none() {
        return;
    }

    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*skb).ifindex };
    emit(ProbeEvent {
        probe_id,
        // SAFETY: plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: a plain static; volatile so the compiler keeps the load the loader patches.
        netns: unsafe { core::ptr::read_volatile(&NETNS_ID) },
        ifindex,
        hook: hook as u8,
        kind: kind as u8,
        family: family as u8,
        _pad: [0; 5],
    });
    count(CounterKey {
        ifindex,
        hook: hook as u8,
        kind: kind as u8,
        family: family as u8,
        _pad: 0,
    });
}

/// Offset of the ICMP header of an unfragmented (or first-fragment) IPv4 ICMP packet.
#[inline(always)]
fn ipv4_icmp_offset(skb: *mut __sk_buff) -> Option<usize> {
    // Bytes 0..10: version/IHL .. protocol, in one load.
    let hdr = load_net::<[u8; 10]>(skb, 0)?;
    if hdr[9] != IPPROTO_ICMP {
        return None;
    }
    // A non-first fragment carries no ICMP header.
    if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    Some(ihl)
}

/// Offset of the ICMPv6 header after walking at most [`MAX_IPV6_EXT_HEADERS`] extension headers.
#[inline(always)]
fn ipv6_icmp_offset(skb: *mut __sk_buff) -> Option<usize> {
    let mut next: u8 = load_net(skb, 6)?;
    let mut off = 40usize;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_ICMPV6 => return Some(off),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext = load_net::<[u8; 2]>(skb, off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let frag = load_net::<[u8; 4]>(skb, off)?;
                // Only the first fragment (offset 0) carries the ICMPv6 header.
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    return None;
                }
                next = frag[0];
                off += 8;
            }
            _ => return None,
        }
    }
    (next == IPPROTO_ICMPV6).then_some(off)
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
