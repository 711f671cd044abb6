//! The HTTP/1 response parser of AppHttpHealthy's load, fed a server's bytes in pieces.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshdoctor_loadgen::fuzzing::http1_response(data);
});
