//! A tracefs event format (events/skb/kfree_skb/format), and the fields the drop tracer reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(format) = meshdoctor_agent::drops::format::TracepointFormat::parse(text)
    {
        for field in ["skbaddr", "location", "protocol", "reason"] {
            let _ = format.field(field);
        }
    }
});
