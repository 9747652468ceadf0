//! End-to-end tests against the real `verity` binary (built by `cargo build --workspace`).
//! See `tests/README.md` for the tiers and what each needs.

mod e2e {
    pub mod backpressure;
    pub mod bad_input;
    pub mod cli;
    pub mod control;
    pub mod dashboards;
    pub mod demo;
    pub mod drain;
    pub mod hostile_loop;
    pub mod intake_auth;
    pub mod istio;
    pub mod kafka;
    pub mod kafka_revocations;
    pub mod kafka_state;
    pub mod otlp_grpc;
    pub mod otlp_http;
    pub mod policy;
    pub mod python_sdk;
    pub mod rules;
    pub mod secrets;
    pub mod self_telemetry;
    pub mod sinks;
}
