//! A policy's rules compiled once into a predicate tree, evaluated over a whole batch at a time
//! in three-valued logic: true, false, or null for unknown. Arrow's Kleene kernels combine the
//! columns, so "unknown AND false" is false and "unknown OR true" is true, exactly as a
//! decision that does not depend on the unknown part should be.

use arrow::array::BooleanArray;
use arrow::compute::kernels::boolean::{and_kleene, not, or_kleene};

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

    /// Evaluates the predicate on every row of the view.
    pub fn eval(&self, view: &EventView<'_>) -> BooleanArray {
        let rows = view.rows();
        match self {
            Pred::Const(c) => BooleanArray::from(vec![*c; rows]),
            Pred::All(preds) => fold(preds, view, true),
            Pred::Any(preds) => fold(preds, view, false),
            Pred::Not(inner) => not(&inner.eval(view)).unwrap_or_else(|_| BooleanArray::from(vec![None; rows])),
            Pred::Text {
                attr,
                patterns,
                ignore_case,
            } => (0..rows)
                .map(|row| match view.text(*attr, row) {
                    Seen::Value(v) if *attr == TextAttr::Path => {
                        let v = normalize_path(v);
                        Some(patterns.iter().any(|p| p.matches(&v)))
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
            Pred::Port(ports) => (0..rows)
                .map(|row| view.destination_port(row).map(|p| ports.contains(&p)))
                .collect(),
            Pred::Ip { attr, blocks } => (0..rows)
                .map(|row| view.ip(*attr, row).map(|ip| blocks.iter().any(|b| b.contains(ip))))
                .collect(),
        }
    }
}

fn fold(preds: &[Pred], view: &EventView<'_>, conjunction: bool) -> BooleanArray {
    let rows = view.rows();
    let mut acc = BooleanArray::from(vec![Some(conjunction); rows]);
    for pred in preds {
        let next = pred.eval(view);
        let combined = if conjunction {
            and_kleene(&acc, &next)
        } else {
            or_kleene(&acc, &next)
        };
        // Both arrays have `rows` elements, the only way these kernels fail.
        acc = combined.unwrap_or_else(|_| BooleanArray::from(vec![None; rows]));
    }
    acc
}
