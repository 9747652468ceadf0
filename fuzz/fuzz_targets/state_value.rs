#![no_main]

// The body is `targets::state_value` in ../targets.rs, shared with collector/tests/fuzz_regressions.rs.
#[allow(dead_code)]
mod targets {
    include!("../targets.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::state_value(data));
