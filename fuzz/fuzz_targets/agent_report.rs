//! An agent's report body as the controller decodes it: postcard or JSON, plain or zstd (the
//! first byte picks the headers), within a size bound.
#![no_main]

use meshdoctor_api::agent_report::{REPORT_CONTENT_TYPE, decode_report};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let content_type = [
        None,
        Some(REPORT_CONTENT_TYPE),
        Some("application/json"),
        Some("text/x"),
    ][usize::from(first & 3)];
    let encoding =
        [None, Some("zstd"), Some("identity"), Some("gzip")][usize::from(first >> 2 & 3)];
    if let Ok(report) = decode_report(body, content_type, encoding, 1 << 20) {
        // What decodes must encode again.
        serde_json::to_vec(&report).expect("a decoded report serializes");
    }
});
