//! Durations in rule files: `500ms`, `30s`, `5m`, `1h`, `1d`.

use serde::{Deserialize, Deserializer};

/// Why a duration does not parse; the message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} has no unit (use ms, s, m, h or d)")]
    NoUnit(String),
    #[error("{0:?} is not a duration")]
    NotANumber(String),
    #[error("{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
    #[error("{0:?} is too long")]
    TooLong(String),
    #[error("{0:?} must be positive")]
    NotPositive(String),
}

/// A duration in nanoseconds, parsed from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub i64);

impl Dur {
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| DurationError::NoUnit(s.to_string()))?;
        let (num, unit) = s.split_at(split);
        let n: i64 = num.parse().map_err(|_| DurationError::NotANumber(s.to_string()))?;
        let mult: i64 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: s.to_string(),
                    unit: unit.to_string(),
                });
            }
        };
        let ns = n
            .checked_mul(mult)
            .ok_or_else(|| DurationError::TooLong(s.to_string()))?;
        if ns <= 0 {
            return Err(DurationError::NotPositive(s.to_string()));
        }
        Ok(Dur(ns))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0;
        for (unit, size) in [
            ("d", 86_400_000_000_000),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
        ] {
            if ns % size == 0 {
                return write!(f, "{}{unit}", ns / size);
            }
        }
        write!(f, "{}ms", ns / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(Dur::parse("5m"), Ok(Dur(300_000_000_000)));
        assert_eq!(Dur::parse("1d").map(|d| d.to_string()), Ok("1d".to_string()));
        assert_eq!(Dur::parse("90s").map(|d| d.to_string()), Ok("90s".to_string()));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("0s").is_err());
        assert!(Dur::parse("5 weeks").is_err());
    }
}
