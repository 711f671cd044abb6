//! A task file (or a PUT /v1/tasks body): YAML or JSON of any kind, validated.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshdoctor_api::Task::from_yaml("fuzz.yaml", text);
    }
});
