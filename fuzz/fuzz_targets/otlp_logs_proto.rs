#![no_main]

// The body is `targets::otlp_logs_proto` in ../targets.rs, shared with collector/tests/fuzz_regressions.rs.
#[allow(dead_code)]
mod targets {
    include!("../targets.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::otlp_logs_proto(data));
