//! Istio `AuthorizationPolicy` semantics over Verity's access events.
//!
//! Policies are read ([`object`]), compiled once into three-valued predicates ([`compile`],
//! [`predicate`]) and evaluated on whole event batches ([`evaluate`]): every request gets
//! allow, deny, or unknown when the outcome depends on something its record does not carry
//! (a JWT claim, a header that is not logged, the labels of a workload missing from the
//! [`inventory`]). Verity never guesses an outcome. `verity policy whatif` and `learn` are
//! built on this.

pub mod compile;
pub mod config;
pub mod drift;
pub mod evaluate;
pub mod event_view;
pub mod inventory;
pub mod learn;
pub mod object;
pub mod pattern;
pub mod predicate;
pub mod shadow;
pub mod target;
pub mod whatif;

pub use compile::{CompileError, CompiledPolicy};
pub use evaluate::{Observed, PolicySet, Verdict, Verdicts};
pub use inventory::Inventory;
pub use object::AuthorizationPolicy;
