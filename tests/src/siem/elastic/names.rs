//! Names: Elasticsearch's index-name rules, generated document ids and data streams' backing index
//! names.

use crate::siem::{splitmix, unix_now};

/// Elasticsearch's index-name rules.
pub(super) fn validate_index_name(name: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("Invalid index name [{name}], {why}"));
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name != name.to_lowercase() {
        return invalid("must be lowercase");
    }
    if name.starts_with(['_', '-', '+']) {
        return invalid("must not start with '_', '-', or '+'");
    }
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..'");
    }
    if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        return invalid("must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]");
    }
    if name.len() > 255 {
        return invalid("index name is too long");
    }
    Ok(())
}

/// A 20-character base64url id, as Elasticsearch generates.
pub(super) fn auto_id(n: u64) -> String {
    const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let a = splitmix(n ^ (unix_now() as u64).rotate_left(20));
    let b = splitmix(a);
    (0..20)
        .map(|i| {
            let bits = if i < 10 { a >> (6 * i) } else { b >> (6 * (i - 10)) };
            URL_SAFE[(bits & 63) as usize] as char
        })
        .collect()
}

/// `.ds-<name>-<yyyy.MM.dd>-000001` for today (UTC).
pub(super) fn backing_index(name: &str) -> String {
    let (y, m, d) = civil_date(unix_now());
    format!(".ds-{name}-{y:04}.{m:02}.{d:02}-000001")
}

/// The UTC calendar date of a Unix time.
fn civil_date(unix: i64) -> (i64, u32, u32) {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(1_709_164_800), (2024, 2, 29));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
    }
}
