#![no_main]

// The body is `targets::config_yaml` in ../targets.rs, shared with collector/tests/fuzz_regressions.rs.
#[allow(dead_code)]
mod targets {
    include!("../targets.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::config_yaml(data));
