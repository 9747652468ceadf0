#![no_main]

// The body is `targets::inventory_yaml` in ../targets.rs, shared with app/tests/fuzz_regressions.rs.
#[allow(dead_code)]
mod targets {
    include!("../targets.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::inventory_yaml(data));
