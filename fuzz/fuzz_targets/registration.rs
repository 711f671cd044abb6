//! An agent's registration body (POST /v1/agents).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<meshdoctor_api::AgentRegistration>(data);
});
