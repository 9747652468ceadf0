//! Durations in rule files: `500ms`, `30s`, `5m`, `1h`, `1d`.

use serde::{Deserialize, Deserializer};

/// A duration in nanoseconds, parsed from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub i64);

impl Dur {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
        let (num, unit) = s.split_at(split);
        let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a duration"))?;
        let mult: i64 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
        };
        let ns = n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too long"))?;
        if ns <= 0 {
            return Err(format!("{s:?} must be positive"));
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
