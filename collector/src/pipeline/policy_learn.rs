//! The live learning stage: every event batch feeds a [`Learner`] shared with the admin API,
//! which proposes least-privilege policies from what the mesh allowed so far
//! (`verity policy learn --live`). What it keeps is bounded by the learner's own limits.

use std::sync::{Arc, Mutex, MutexGuard};

use verity_policy::AuthorizationPolicy;
use verity_policy::Inventory;
use verity_policy::learn::{LearnReport, LearnSettings, Learner};

use crate::pipeline::{Batch, Stage, StageError};

/// The edges learned so far, and the inventory selectors come from.
#[derive(Debug, Default)]
pub struct LearnedEdges {
    learner: Mutex<Learner>,
    inventory: Inventory,
}

impl LearnedEdges {
    pub fn new(inventory: Inventory) -> Self {
        Self {
            learner: Mutex::new(Learner::default()),
            inventory,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Learner> {
        self.learner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The policies proposed from everything learned so far.
    pub fn propose(&self, settings: &LearnSettings) -> (Vec<AuthorizationPolicy>, LearnReport) {
        self.lock().propose(&self.inventory, settings)
    }
}

pub struct PolicyLearnStage {
    edges: Arc<LearnedEdges>,
}

impl PolicyLearnStage {
    pub fn new(edges: Arc<LearnedEdges>) -> Self {
        Self { edges }
    }
}

impl Stage for PolicyLearnStage {
    fn name(&self) -> &'static str {
        "policy_learn"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        if let Batch::Events(events) = batch {
            self.edges.lock().add(events, &self.edges.inventory);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }
}
