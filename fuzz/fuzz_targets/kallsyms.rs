//! /proc/kallsyms, read to name drop locations (the first 16 bytes are two addresses to name).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (addrs, text) = data.split_at(16);
    let addrs: Vec<u64> = addrs
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let _ = meshdoctor_agent::drops::kallsyms::nearest_symbols(text, &addrs);
});
