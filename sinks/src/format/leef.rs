//! IBM Log Event Extended Format (LEEF 2.0): one line per alert, QRadar's native syslog
//! payload.
//!
//! `devTime` is sent as `MMM dd yyyy HH:mm:ss.SSS zzz` in GMT *with* a `devTimeFormat` key
//! spelling that pattern, so QRadar never guesses the zone or the precision.

use std::fmt::Write as _;

use verity_model::alert::Alert;
use verity_model::event::col;
use verity_model::time;

use super::cef::{column, epoch_ms, ip_column, port_column, severity_0_10};

/// The Java `SimpleDateFormat` pattern of the `devTime` values written here.
pub const DEV_TIME_FORMAT: &str = "MMM dd yyyy HH:mm:ss.SSS zzz";

/// What the LEEF header says produced the event, and the attribute delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeefOptions {
    pub vendor: String,
    pub product: String,
    pub version: String,
    /// Separates the `key=value` attributes. One that cannot work (`=`, `\`, a line break, or
    /// beyond the four hex digits the header can name) is replaced by a tab.
    pub delimiter: char,
}

impl Default for LeefOptions {
    fn default() -> Self {
        Self {
            vendor: "Verity".to_string(),
            product: "Verity".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            delimiter: '\t',
        }
    }
}

/// `LEEF:2.0|Vendor|Product|Version|rule id|delimiter|k=v<delim>k=v…`, attributes in a fixed order.
pub fn encode(alert: &Alert, opts: &LeefOptions) -> String {
    let delimiter = usable_delimiter(opts.delimiter);
    let mut out = String::with_capacity(512);
    out.push_str("LEEF:2.0");
    for field in [&opts.vendor, &opts.product, &opts.version, &alert.rule_id] {
        out.push('|');
        push_header(&mut out, field);
    }
    out.push('|');
    push_delimiter_spec(&mut out, delimiter);
    out.push('|');

    let mut attrs = Attributes {
        out,
        delimiter,
        empty: true,
    };
    if let Some(dev_time) = dev_time(&alert.last_seen) {
        attrs.pair("devTime", &dev_time);
        attrs.pair("devTimeFormat", DEV_TIME_FORMAT);
    }
    attrs.pair("sev", &severity_0_10(alert.severity).to_string());
    attrs.pair("cat", &alert.kind);
    attrs.opt("usrName", column(alert, col::SOURCE_PRINCIPAL));
    if let Some(ip) = ip_column(alert, col::SOURCE_IP) {
        attrs.pair("src", &ip.to_string());
    }
    if let Some(ip) = ip_column(alert, col::DESTINATION_IP) {
        attrs.pair("dst", &ip.to_string());
    }
    if let Some(port) = port_column(alert, col::DESTINATION_PORT) {
        attrs.pair("dstPort", &port.to_string());
    }
    attrs.pair("alertId", &alert.id);
    attrs.pair("ruleId", &alert.rule_id);
    attrs.pair("title", &alert.title);
    attrs.pair("status", alert.status.as_str());
    attrs.pair("summary", &alert.summary);
    attrs.pair("count", &alert.count.to_string());
    attrs.pair("tags", &alert.tags.join(","));
    attrs.opt("requestPrincipal", column(alert, col::REQUEST_PRINCIPAL));
    attrs.opt("destinationService", column(alert, col::DESTINATION_SERVICE));
    attrs.opt("destinationNamespace", column(alert, col::DESTINATION_NAMESPACE));
    attrs.out
}

fn usable_delimiter(c: char) -> char {
    if matches!(c, '=' | '\\' | '\r' | '\n') || u32::from(c) > 0xFFFF {
        '\t'
    } else {
        c
    }
}

/// A printable character is written as itself; anything else (and `|`, which would end the
/// header field) as `xHH`, the hex form LEEF 2.0 defines.
fn push_delimiter_spec(out: &mut String, c: char) {
    if c.is_ascii_graphic() && c != '|' {
        out.push(c);
    } else {
        let _ = write!(out, "x{:02X}", u32::from(c));
    }
}

/// Header fields: `|` separates them and `\` escapes; a line break would end the event, so it
/// becomes a space.
fn push_header(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// `Nov 22 2026 10:00:00.123 GMT`, from the fixed-width UTC form the model formats.
fn dev_time(rfc3339: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ms = epoch_ms(rfc3339)?;
    let utc = time::format_rfc3339_ns(ms.checked_mul(1_000_000)?);
    let month: usize = utc.get(5..7)?.parse().ok()?;
    let month = MONTHS.get(month.checked_sub(1)?)?;
    Some(format!(
        "{month} {} {} {}.{} GMT",
        utc.get(8..10)?,
        utc.get(0..4)?,
        utc.get(11..19)?,
        utc.get(20..23)?
    ))
}

struct Attributes {
    out: String,
    delimiter: char,
    empty: bool,
}

impl Attributes {
    /// Empty values are left out rather than sent as `key=`.
    fn pair(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        if !self.empty {
            self.out.push(self.delimiter);
        }
        self.empty = false;
        self.out.push_str(key);
        self.out.push('=');
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c if c == self.delimiter => {
                    self.out.push('\\');
                    self.out.push(c);
                }
                c => self.out.push(c),
            }
        }
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.pair(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use verity_model::alert::Severity;

    use super::super::cef::tests::sample;
    use super::*;

    fn opts(delimiter: char) -> LeefOptions {
        LeefOptions {
            vendor: "Verity".to_string(),
            product: "Verity".to_string(),
            version: "1.0".to_string(),
            delimiter,
        }
    }

    #[test]
    fn encodes_a_whole_alert_with_the_default_tab_delimiter() {
        let expected = [
            "LEEF:2.0|Verity|Verity|1.0|unauth-payments|x09|devTime=Nov 22 2026 10:00:00.123 GMT",
            "devTimeFormat=MMM dd yyyy HH:mm:ss.SSS zzz",
            "sev=8",
            "cat=detection",
            "usrName=spiffe://cluster.local/ns/shop/sa/cart",
            "alertId=unauth-payments-00000000deadbeef",
            "ruleId=unauth-payments",
            "title=Unauthorized calls to payments",
            "status=firing",
            "summary=spiffe://cluster.local/ns/shop/sa/cart was denied 2 times",
            "count=2",
            "tags=attack.t1078,pci",
            "destinationService=payments.prod.svc.cluster.local",
            "destinationNamespace=prod",
        ]
        .join("\t");
        assert_eq!(encode(&sample(), &opts('\t')), expected);
        assert_eq!(LeefOptions::default().delimiter, '\t');
    }

    #[test]
    fn writes_a_printable_delimiter_as_itself_and_others_in_hex() {
        assert!(encode(&sample(), &opts('^')).starts_with("LEEF:2.0|Verity|Verity|1.0|unauth-payments|^|devTime="));
        assert!(encode(&sample(), &opts('|')).contains("|unauth-payments|x7C|devTime="));
        assert!(encode(&sample(), &opts(' ')).contains("|unauth-payments|x20|devTime="));
        assert!(encode(&sample(), &opts('¦')).contains("|unauth-payments|xA6|devTime="));
        let unusable = encode(&sample(), &opts('='));
        assert!(unusable.contains("|unauth-payments|x09|devTime=") && unusable.contains("\tsev=8\t"));
    }

    #[test]
    fn escapes_the_delimiter_backslashes_and_newlines_in_values() {
        let mut a = sample();
        a.summary = "a^b\\c=d|e\nf\rg".to_string();
        let line = encode(&a, &opts('^'));
        assert!(line.contains("^summary=a\\^b\\\\c=d|e\\nf\\rg^count=2^"), "{line}");

        a.summary = "tab\there".to_string();
        let line = encode(&a, &opts('\t'));
        assert!(line.contains("\tsummary=tab\\\there\tcount=2\t"), "{line}");
    }

    #[test]
    fn escapes_pipes_and_backslashes_in_the_header() {
        let mut a = sample();
        a.rule_id = "r|1\\x\ny".to_string();
        let o = LeefOptions {
            product: "Ver|ity".to_string(),
            ..opts('^')
        };
        assert!(encode(&a, &o).starts_with("LEEF:2.0|Verity|Ver\\|ity|1.0|r\\|1\\\\x y|^|devTime="));
    }

    #[test]
    fn keeps_non_ascii_as_utf8() {
        let mut a = sample();
        a.title = "ünïcødé 🚨".to_string();
        assert!(encode(&a, &opts('^')).contains("^title=ünïcødé 🚨^"));
    }

    #[test]
    fn formats_dev_time_in_gmt_with_milliseconds() {
        assert_eq!(
            dev_time("2026-01-05T23:59:59.9999Z").as_deref(),
            Some("Jan 05 2026 23:59:59.999 GMT")
        );
        assert_eq!(
            dev_time("2026-03-01T01:00:00+02:00").as_deref(),
            Some("Feb 28 2026 23:00:00.000 GMT")
        );
        assert_eq!(dev_time("yesterday"), None);
        let mut a = sample();
        a.last_seen = "yesterday".to_string();
        assert!(encode(&a, &opts('^')).starts_with("LEEF:2.0|Verity|Verity|1.0|unauth-payments|^|sev=8^"));
    }

    #[test]
    fn maps_severity_on_the_cef_scale() {
        let mut a = sample();
        for (s, n) in [(Severity::Info, 1), (Severity::Medium, 5), (Severity::Critical, 10)] {
            a.severity = s;
            assert!(encode(&a, &opts('^')).contains(&format!("^sev={n}^")));
        }
    }
}
