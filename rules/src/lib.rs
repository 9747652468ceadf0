//! Verity's rules engine: detections and continuous zero-trust assertions, written as data
//! (YAML with SQL expressions), compiled once into DataFusion physical expressions and
//! evaluated on every Arrow batch of access events in event time.
//!
//! - [`rule`]: the rule file format and loading (one rule per file).
//! - [`compile`]: SQL → `PhysicalExpr`, type checks, did-you-mean errors; once per load.
//! - [`engine`]: runs a compiled rule set over batches with a watermark and emits alerts;
//!   it drives every rule through one trait (`kind.rs`), which each kind implements over its
//!   own state: [`detection`], [`assertion`], [`first_seen`], [`absence`]; `emit.rs` builds
//!   their alerts; what makes a rule fail on a batch is an [`eval_error::EvalError`].
//! - [`key_sets`]: the key sets of stateful rules and their keyed streams (repartitioning).
//! - [`partition_state`]: rule state by keyed-stream partition, handed between instances.
//! - [`revocation`]: the revocation list rules consult through `is_revoked(principal)`.
//! - [`pack`]: the built-in zero-trust rule pack, embedded in the binary.

#![forbid(unsafe_code)]

pub mod absence;
pub mod assertion;
mod checkpoint;
pub mod compile;
mod compiled_like;
mod compiled_regex;
mod compiled_split_part;
pub mod detection;
pub mod duration;
mod emit;
pub mod engine;
pub mod eval_error;
pub mod event_clock;
mod evidence;
pub mod first_seen;
pub mod key_sets;
mod kind;
mod literal_prefilter;
mod mask;
mod null_as_false;
pub mod pack;
mod packed_evidence;
pub mod partition_state;
pub mod revocation;
pub mod rule;
mod slot_threads;
pub mod state_bound;
mod state_key;

pub use compile::{CompileError, CompiledRule, Compiler};
pub use engine::{Engine, EngineSettings, EngineStats};
pub use kind::ImportError;
pub use revocation::RevocationList;
pub use rule::{LoadError, RuleFile, RuleSource};

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod rewrite_tests;
#[cfg(all(test, unix))]
mod rule_tests;
