//! Wire encodings of an alert, one module per SIEM format. Pure functions: no I/O, no clock
//! (callers pass the time), so each is tested on tricky values next to its code.

pub mod cef;
pub mod ecs;
pub mod hec;
pub mod leef;
pub mod ocsf;
pub mod sentinel;
pub mod syslog;
