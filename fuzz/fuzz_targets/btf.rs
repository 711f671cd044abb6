//! A BTF blob (the kernel's /sys/kernel/btf/vmlinux), and the lookups the drop tracer makes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = meshdoctor_agent::drops::btf::Btf::parse(data.to_vec()) {
        let _ = btf.enum_values("skb_drop_reason");
        let _ = btf.member("sk_buff", "len");
        let _ = btf.member("net_device", "nd_net.net");
    }
});
