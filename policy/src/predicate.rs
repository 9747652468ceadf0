//! A policy's rules compiled once into a predicate tree, evaluated column-wise over the rows of
//! a batch a policy can apply to, in three-valued (Kleene) logic: true, false, or `None` for
//! unknown, so "unknown AND false" is false and "unknown OR true" is true, exactly as a
//! decision that does not depend on the unknown part should be.

use crate::event_view::{EventView, IpAttr, Seen, TextAttr};
use crate::pattern::{IpBlock, Pattern, normalize_path};

#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// `Some(b)`: always `b`; `None`: always unknown (a key no record carries).
    Const(Option<bool>),
    /// All hold (true when empty).
    All(Vec<Pred>),
    /// Any holds (false when empty).
    Any(Vec<Pred>),
    Not(Box<Pred>),
    /// The attribute matches one of the patterns; absent is false, unknown is null.
    Text {
        attr: TextAttr,
        patterns: Vec<Pattern>,
        ignore_case: bool,
    },
    /// The destination port is one of these.
    Port(Vec<i32>),
    /// The address is in one of the blocks.
    Ip {
        attr: IpAttr,
        blocks: Vec<IpBlock>,
    },
}

impl Pred {
    pub fn all(mut preds: Vec<Pred>) -> Pred {
        preds.retain(|p| *p != Pred::Const(Some(true)));
        if preds.contains(&Pred::Const(Some(false))) {
            return Pred::Const(Some(false));
        }
        if preds.len() == 1 {
            preds.pop().unwrap_or(Pred::Const(Some(true)))
        } else {
            Pred::All(preds)
        }
    }

    pub fn any(mut preds: Vec<Pred>) -> Pred {
        preds.retain(|p| *p != Pred::Const(Some(false)));
        if preds.contains(&Pred::Const(Some(true))) {
            return Pred::Const(Some(true));
        }
        if preds.len() == 1 {
            preds.pop().unwrap_or(Pred::Const(Some(false)))
        } else {
            Pred::Any(preds)
        }
    }

    pub fn negate(self) -> Pred {
        match self {
            Pred::Const(c) => Pred::Const(c.map(|b| !b)),
            Pred::Not(inner) => *inner,
            other => Pred::Not(Box::new(other)),
        }
    }

    /// Evaluates the predicate on the selected rows of the view, in their order.
    pub fn eval(&self, view: &EventView<'_>, rows: &[usize]) -> Vec<Option<bool>> {
        match self {
            Pred::Const(c) => vec![*c; rows.len()],
            Pred::All(preds) => fold(preds, view, rows, true),
            Pred::Any(preds) => fold(preds, view, rows, false),
            Pred::Not(inner) => inner.eval(view, rows).into_iter().map(|v| v.map(|b| !b)).collect(),
            Pred::Text {
                attr,
                patterns,
                ignore_case,
            } => rows
                .iter()
                .map(|&row| match view.text(*attr, row) {
                    Seen::Value(v) if *attr == TextAttr::Path => {
                        let v = normalize_path(v);
                        if patterns.iter().any(|p| p.matches(&v)) {
                            Some(true)
                        } else if patterns.contains(&Pattern::Undecided) {
                            None
                        } else {
                            Some(false)
                        }
                    }
                    Seen::Value(v) => Some(patterns.iter().any(|p| {
                        if *ignore_case {
                            p.matches_ignore_case(v)
                        } else {
                            p.matches(v)
                        }
                    })),
                    Seen::Absent => Some(false),
                    Seen::Unknown => None,
                })
                .collect(),
            Pred::Port(ports) => rows
                .iter()
                .map(|&row| view.destination_port(row).map(|p| ports.contains(&p)))
                .collect(),
            Pred::Ip { attr, blocks } => rows
                .iter()
                .map(|&row| view.ip(*attr, row).map(|ip| blocks.iter().any(|b| b.contains(ip))))
                .collect(),
        }
    }
}

/// Three-valued AND (`conjunction`) or OR over the predicates, row by row.
fn fold(preds: &[Pred], view: &EventView<'_>, rows: &[usize], conjunction: bool) -> Vec<Option<bool>> {
    let mut acc = vec![Some(conjunction); rows.len()];
    for pred in preds {
        let next = pred.eval(view, rows);
        for (a, b) in acc.iter_mut().zip(next) {
            *a = if conjunction {
                kleene_and(*a, b)
            } else {
                kleene_or(*a, b)
            };
        }
    }
    acc
}

pub fn kleene_and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

pub fn kleene_or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}
