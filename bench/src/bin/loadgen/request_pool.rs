//! The export requests `verity-loadgen` sends, encoded once and patched per send.
//!
//! Encoding protobuf for every send would spend the generator's CPU on itself, so each request
//! is encoded once into a [`RequestTemplate`] that remembers where, inside the encoded bytes,
//! the fields that change per send are: the request number (Verity acknowledges a repeated
//! request without evaluating it again), every record's event time (so event time follows the
//! wall clock, as a live mesh's does) and, in a canary template, the line a canary replaces.
//! Every one of them has a fixed width, so patching never changes a length and the protobuf
//! framing stays valid.

use std::ops::Range;

use anyhow::{Context, anyhow, ensure};
use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use verity_bench::mesh_traffic::{LineKind, TIMESTAMP_LEN};
use verity_e2e::otlp;

/// The attribute of a request's first record that carries the request number.
pub(crate) const NUMBER_ATTRIBUTE: &str = "loadgen.request";
/// Digits of a request number.
pub(crate) const NUMBER_WIDTH: usize = 16;
/// Request numbers wrap here to keep [`NUMBER_WIDTH`] digits.
pub(crate) const NUMBER_MODULUS: u64 = 10_000_000_000_000_000;
/// What the request number is written over.
pub(crate) const NUMBER_PLACEHOLDER: &str = "0000000000000000";

/// An encoded `ExportLogsServiceRequest` and where its per-send fields are.
pub(crate) struct RequestTemplate {
    encoded: Bytes,
    /// Log records in the request.
    records: u64,
    /// Where the request number's [`NUMBER_WIDTH`] digits are.
    number_at: usize,
    /// Where each record's event time is ([`TIMESTAMP_LEN`] bytes from each), in record order.
    timestamps_at: Vec<usize>,
    /// In a canary template: the line (the record's whole body) a canary is written over.
    canary_at: Option<Range<usize>>,
}

impl RequestTemplate {
    /// One record per line, each line's event time where its kind puts it, the request number
    /// on the first record. With `canary_placeholder`, the first sidecar line is replaced by it
    /// and [`RequestTemplate::render`] writes a canary of the same length there.
    pub(crate) fn mesh(lines: &[(String, LineKind)], canary_placeholder: Option<&str>) -> anyhow::Result<Self> {
        ensure!(!lines.is_empty(), "a request needs at least one record");
        let canary_record = match canary_placeholder {
            Some(_) => Some(
                lines
                    .iter()
                    .position(|(_, kind)| *kind == LineKind::Sidecar)
                    .ok_or_else(|| anyhow!("no sidecar line for a canary to replace"))?,
            ),
            None => None,
        };
        let bodies: Vec<&str> = lines
            .iter()
            .enumerate()
            .map(|(i, (text, _))| match (Some(i) == canary_record, canary_placeholder) {
                (true, Some(placeholder)) => placeholder,
                _ => text.as_str(),
            })
            .collect();
        let request = otlp::logs_request(
            bodies
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let attributes = if i == 0 {
                        vec![otlp::kv(NUMBER_ATTRIBUTE, NUMBER_PLACEHOLDER)]
                    } else {
                        Vec::new()
                    };
                    otlp::record(body, attributes)
                })
                .collect(),
        );
        let encoded = request.encode_to_vec();
        // The records' bodies are in the encoding verbatim and in order: find each one after
        // the one before it.
        let mut cursor = 0;
        let mut number_at = None;
        let mut timestamps_at = Vec::with_capacity(lines.len());
        let mut canary_at = None;
        for (i, ((_, kind), body)) in lines.iter().zip(&bodies).enumerate() {
            let at = find(&encoded, body.as_bytes(), cursor).with_context(|| format!("record {i} not found"))?;
            cursor = at + body.len();
            if i == 0 {
                // The first record's attributes follow its body.
                number_at = find(&encoded, NUMBER_PLACEHOLDER.as_bytes(), cursor);
            }
            if Some(i) == canary_record {
                canary_at = Some(at..cursor);
            } else {
                timestamps_at.push(at + kind.timestamp_offset());
            }
        }
        Ok(Self {
            records: lines.len() as u64,
            number_at: number_at.context("request number placeholder not found")?,
            timestamps_at,
            canary_at,
            encoded: Bytes::from(encoded),
        })
    }

    /// A request of fixed records (the hostile shapes): only the request number changes, over
    /// [`NUMBER_ATTRIBUTE`]'s placeholder value.
    pub(crate) fn fixed(request: &ExportLogsServiceRequest) -> anyhow::Result<Self> {
        let records = request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len() as u64)
            .sum::<u64>();
        let encoded = request.encode_to_vec();
        Ok(Self {
            records,
            number_at: find(&encoded, NUMBER_PLACEHOLDER.as_bytes(), 0)
                .context("request number placeholder not found")?,
            timestamps_at: Vec::new(),
            canary_at: None,
            encoded: Bytes::from(encoded),
        })
    }

    /// Log records in the request.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The request to send: a copy with `number` (modulo [`NUMBER_MODULUS`]), every record's
    /// event time set to `time` ([`TIMESTAMP_LEN`] bytes, see `mesh_traffic::rfc3339`) and,
    /// in a canary template, `canary` as the canary record's line (as long as the placeholder
    /// the template was made with).
    pub(crate) fn render(&self, number: u64, time: &str, canary: Option<&str>) -> anyhow::Result<Bytes> {
        ensure!(
            time.len() == TIMESTAMP_LEN,
            "event time {time:?} is not {TIMESTAMP_LEN} bytes"
        );
        let mut body = BytesMut::from(&self.encoded[..]);
        let number = format!("{:0width$}", number % NUMBER_MODULUS, width = NUMBER_WIDTH);
        overwrite(&mut body, self.number_at, number.as_bytes())?;
        for &at in &self.timestamps_at {
            overwrite(&mut body, at, time.as_bytes())?;
        }
        match (&self.canary_at, canary) {
            (Some(slot), Some(line)) => {
                ensure!(
                    line.len() == slot.len(),
                    "canary line of {} bytes for a slot of {}",
                    line.len(),
                    slot.len()
                );
                overwrite(&mut body, slot.start, line.as_bytes())?;
            }
            (None, Some(_)) => return Err(anyhow!("a canary for a template without a canary slot")),
            // A canary template sent without a canary would repeat the placeholder's token.
            (Some(_), None) => return Err(anyhow!("a canary template needs its canary line")),
            (None, None) => {}
        }
        Ok(body.freeze())
    }
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}

fn overwrite(body: &mut BytesMut, at: usize, with: &[u8]) -> anyhow::Result<()> {
    body.get_mut(at..at + with.len())
        .ok_or_else(|| anyhow!("patch at {at} past the end of the request"))?
        .copy_from_slice(with);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use verity_bench::mesh_traffic::{MeshTraffic, Profile};

    fn lines(count: u64) -> Vec<(String, LineKind)> {
        let mut traffic = MeshTraffic::new(Profile::default());
        (0..count).map(|n| traffic.line(n)).collect()
    }

    fn decode(body: &[u8]) -> Vec<(String, Vec<(String, String)>)> {
        let request = ExportLogsServiceRequest::decode(body).expect("still a valid request");
        request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .map(|r| {
                let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => panic!("not a string: {other:?}"),
                };
                let attributes = r
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect();
                (text(&r.body), attributes)
            })
            .collect()
    }

    #[test]
    fn finds_every_records_event_time_and_the_request_number() {
        let lines = lines(200);
        let template = RequestTemplate::mesh(&lines, None).unwrap();
        assert_eq!(template.records(), 200);
        assert_eq!(template.timestamps_at.len(), 200);
        for ((text, kind), &at) in lines.iter().zip(&template.timestamps_at) {
            let offset = kind.timestamp_offset();
            assert_eq!(
                &template.encoded[at..at + TIMESTAMP_LEN],
                &text.as_bytes()[offset..offset + TIMESTAMP_LEN]
            );
        }
        assert_eq!(
            &template.encoded[template.number_at..template.number_at + NUMBER_WIDTH],
            NUMBER_PLACEHOLDER.as_bytes()
        );
    }

    #[test]
    fn a_patched_request_decodes_with_the_new_time_and_number_at_the_same_length() {
        let lines = lines(50);
        let template = RequestTemplate::mesh(&lines, None).unwrap();
        let now = "2031-12-24T18:30:05.123456Z";
        let body = template.render(42, now, None).unwrap();
        assert_eq!(body.len(), template.encoded.len());
        let records = decode(&body);
        assert_eq!(records.len(), 50);
        for ((text, kind), (got, _)) in lines.iter().zip(&records) {
            let at = kind.timestamp_offset();
            let expected = format!("{}{now}{}", &text[..at], &text[at + TIMESTAMP_LEN..]);
            assert_eq!(got, &expected);
        }
        assert_eq!(
            records[0].1,
            [(NUMBER_ATTRIBUTE.to_owned(), "0000000000000042".to_owned())]
        );
        assert!(
            template.render(1, "2031-12-24T18:30:05Z", None).is_err(),
            "a shorter time"
        );
    }

    #[test]
    fn a_canary_replaces_the_first_sidecar_line() {
        // Starting at an odd line: the first record is a ztunnel line.
        let lines: Vec<_> = lines(11).into_iter().skip(1).collect();
        let placeholder = "X".repeat(300);
        let template = RequestTemplate::mesh(&lines, Some(&placeholder)).unwrap();
        assert_eq!(template.canary_at.as_ref().map(Range::len), Some(300));
        assert_eq!(template.timestamps_at.len(), 9, "the canary's line is written whole");
        let canary = "C".repeat(300);
        let now = "2031-12-24T18:30:05.123456Z";
        let records = decode(&template.render(7, now, Some(&canary)).unwrap());
        assert_eq!(records[1].0, canary);
        assert!(records[0].0.starts_with(now) && records[2].0.starts_with(now));
        assert!(template.render(7, now, None).is_err());
        assert!(template.render(7, now, Some("short")).is_err());
        assert!(
            RequestTemplate::mesh(&lines[..1], Some(&placeholder)).is_err(),
            "no sidecar line"
        );
    }
}
