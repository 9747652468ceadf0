//! RFC 5424 syslog messages carrying an alert (its body is a CEF or LEEF line), and RFC 6587
//! octet-counting framing for TCP and TLS (RFC 5425) transports.
//!
//! Header fields are forced into RFC 5424's grammar (printable US-ASCII, bounded lengths)
//! instead of being rejected: a misconfigured hostname must not stop alerts from leaving.

use std::fmt::Write as _;

use verity_model::alert::{Alert, Severity};
use verity_model::time;

/// How the syslog header and structured data are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc5424 {
    /// 0..=23; larger values are clamped to 23 (local7). Default 4, "security/authorization".
    pub facility: u8,
    /// The caller replaces the default `-` with this host's name.
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    /// The SD-ID of the one structured-data element; empty sends no structured data.
    /// `32473` is the private enterprise number RFC 5612 reserves for documentation.
    pub sd_id: String,
}

impl Default for Rfc5424 {
    fn default() -> Self {
        Self {
            facility: 4,
            hostname: "-".to_string(),
            app_name: "verity".to_string(),
            procid: "-".to_string(),
            sd_id: "verity@32473".to_string(),
        }
    }
}

const NIL: &str = "-";
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;
const SD_NAME_MAX: usize = 32;

impl Rfc5424 {
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
    ///
    /// `timestamp` is RFC 3339 (the caller's clock); it is rewritten in UTC with microseconds,
    /// the most precision RFC 5424 allows, and a malformed one becomes the nil value. The MSGID
    /// is `alert.<status>`, so receivers can route firing and resolved alerts apart. The body
    /// goes out as is, without a BOM; an empty body leaves MSG out.
    pub fn message(&self, alert: &Alert, timestamp: &str, body: &str) -> String {
        let pri = u16::from(self.facility.min(23)) * 8 + u16::from(severity(alert.severity));
        let timestamp = syslog_timestamp(timestamp).unwrap_or_else(|| NIL.to_string());
        let mut out = String::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "<{pri}>1 {timestamp} {} {} {} {} ",
            header_field(&self.hostname, HOSTNAME_MAX),
            header_field(&self.app_name, APP_NAME_MAX),
            header_field(&self.procid, PROCID_MAX),
            header_field(&format!("alert.{}", alert.status.as_str()), MSGID_MAX),
        );
        let sd_id = sd_name(&self.sd_id);
        if sd_id.is_empty() {
            out.push_str(NIL);
        } else {
            out.push('[');
            out.push_str(&sd_id);
            for (name, value) in [
                ("alert_id", alert.id.as_str()),
                ("rule", &alert.rule_id),
                ("severity", alert.severity.as_str()),
                ("status", alert.status.as_str()),
                ("kind", &alert.kind),
            ] {
                out.push(' ');
                out.push_str(name);
                out.push_str("=\"");
                push_param_value(&mut out, value);
                out.push('"');
            }
            out.push(']');
        }
        if !body.is_empty() {
            out.push(' ');
            out.push_str(body);
        }
        out
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`, LEN being MSG's length in bytes.
pub fn octet_frame(msg: &str) -> Vec<u8> {
    let mut framed = format!("{} ", msg.len()).into_bytes();
    framed.extend_from_slice(msg.as_bytes());
    framed
}

/// Syslog severities: 2 critical, 3 error, 4 warning, 5 notice, 6 informational.
fn severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// RFC 5424 TIME-SECFRAC has at most six digits, where the model writes nine.
fn syslog_timestamp(rfc3339: &str) -> Option<String> {
    let utc = time::format_rfc3339_ns(time::parse_rfc3339_ns(rfc3339)?);
    Some(format!("{}Z", utc.get(..26)?))
}

/// PRINTUSASCII only (anything else becomes `_`), at most `max` characters, `-` when empty.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if field.is_empty() { NIL.to_string() } else { field }
}

/// SD-NAME: PRINTUSASCII except `=`, space, `]` and `"`, at most 32 characters.
fn sd_name(value: &str) -> String {
    value
        .chars()
        .take(SD_NAME_MAX)
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// PARAM-VALUE is UTF-8 with `"`, `\` and `]` backslash-escaped (RFC 5424 §6.3.3).
fn push_param_value(out: &mut String, value: &str) {
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use verity_model::alert::AlertStatus;

    use super::super::cef::tests::sample;
    use super::*;

    const NOW: &str = "2026-11-22T10:00:01.5Z";

    fn syslog() -> Rfc5424 {
        Rfc5424 {
            hostname: "verity-0.verity.svc".to_string(),
            ..Rfc5424::default()
        }
    }

    #[test]
    fn writes_a_whole_message() {
        assert_eq!(
            syslog().message(&sample(), NOW, "CEF:0|x"),
            "<35>1 2026-11-22T10:00:01.500000Z verity-0.verity.svc verity - alert.firing \
             [verity@32473 alert_id=\"unauth-payments-00000000deadbeef\" rule=\"unauth-payments\" \
             severity=\"high\" status=\"firing\" kind=\"detection\"] CEF:0|x"
        );
    }

    #[test]
    fn computes_pri_from_facility_and_severity() {
        let mut a = sample();
        let pri = |s: &Rfc5424, a: &Alert| {
            let m = s.message(a, NOW, "");
            m[1..m.find('>').unwrap_or(1)].to_string()
        };
        let expected = [
            (Severity::Critical, "34"),
            (Severity::High, "35"),
            (Severity::Medium, "36"),
        ];
        for (sev, want) in expected
            .into_iter()
            .chain([(Severity::Low, "37"), (Severity::Info, "38")])
        {
            a.severity = sev;
            assert_eq!(pri(&syslog(), &a), want, "{sev:?}");
        }
        let local7 = Rfc5424 {
            facility: 23,
            ..syslog()
        };
        assert_eq!(pri(&local7, &a), "190");
        let too_big = Rfc5424 {
            facility: 200,
            ..syslog()
        };
        assert_eq!(pri(&too_big, &a), "190");
        let kern = Rfc5424 {
            facility: 0,
            ..syslog()
        };
        a.severity = Severity::Critical;
        assert_eq!(pri(&kern, &a), "2");
    }

    #[test]
    fn escapes_quotes_backslashes_and_brackets_in_sd_values() {
        let mut a = sample();
        a.rule_id = "r\"1\\]x=y ünï".to_string();
        let m = syslog().message(&a, NOW, "");
        assert!(m.contains(" rule=\"r\\\"1\\\\\\]x=y ünï\" "), "{m}");
        assert!(m.ends_with("kind=\"detection\"]"), "an empty body adds nothing: {m}");
    }

    #[test]
    fn sanitizes_and_bounds_header_fields() {
        let s = Rfc5424 {
            hostname: "host name\twith ünï".to_string(),
            app_name: "a".repeat(60),
            procid: String::new(),
            sd_id: "my id=\"x\"]@1234567890123456789012345".to_string(),
            ..Rfc5424::default()
        };
        let m = s.message(&sample(), NOW, "body");
        let expected_head = format!(
            "<35>1 2026-11-22T10:00:01.500000Z host_name_with__n_ {} - alert.firing [my_id__x__@123456789012345678901 ",
            "a".repeat(48)
        );
        assert!(m.starts_with(&expected_head), "{m}");
    }

    #[test]
    fn bounds_the_msgid_at_32_characters() {
        assert_eq!(header_field(&"m".repeat(40), MSGID_MAX), "m".repeat(32));
        assert_eq!(header_field("alert.résolu", MSGID_MAX), "alert.r_solu");
        assert_eq!(header_field("", MSGID_MAX), "-");
        let mut a = sample();
        a.status = AlertStatus::Resolved;
        assert!(syslog().message(&a, NOW, "").contains(" verity - alert.resolved ["));
    }

    #[test]
    fn an_empty_sd_id_sends_no_structured_data() {
        let s = Rfc5424 {
            sd_id: String::new(),
            ..syslog()
        };
        assert_eq!(
            s.message(&sample(), NOW, "msg"),
            "<35>1 2026-11-22T10:00:01.500000Z verity-0.verity.svc verity - alert.firing - msg"
        );
    }

    #[test]
    fn normalizes_the_timestamp_and_nils_a_bad_one() {
        assert_eq!(
            syslog_timestamp("2026-11-22T11:00:00.123456789+01:00").as_deref(),
            Some("2026-11-22T10:00:00.123456Z")
        );
        assert_eq!(
            syslog_timestamp("2026-11-22T10:00:00Z").as_deref(),
            Some("2026-11-22T10:00:00.000000Z")
        );
        assert_eq!(syslog_timestamp("now"), None);
        assert!(
            syslog()
                .message(&sample(), "now", "")
                .starts_with("<35>1 - verity-0.verity.svc ")
        );
    }

    #[test]
    fn keeps_a_utf8_body_as_is_without_a_bom() {
        let m = syslog().message(&sample(), NOW, "ünïcødé 🚨");
        assert!(m.ends_with("] ünïcødé 🚨"));
        assert!(!m.contains('\u{feff}'));
    }

    #[test]
    fn frames_by_byte_length() {
        assert_eq!(octet_frame("abc"), b"3 abc");
        assert_eq!(octet_frame(""), b"0 ");
        let framed = octet_frame("ü🚨");
        assert_eq!(framed, "6 ü🚨".as_bytes());
    }

    #[test]
    fn defaults() {
        let d = Rfc5424::default();
        assert_eq!(
            (
                d.facility,
                d.hostname.as_str(),
                d.app_name.as_str(),
                d.procid.as_str(),
                d.sd_id.as_str()
            ),
            (4, "-", "verity", "-", "verity@32473")
        );
    }
}
