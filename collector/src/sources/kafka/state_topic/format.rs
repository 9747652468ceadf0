//! The state topic's values: a partition's snapshot cut into chunks, each framed (`VST1`,
//! partition, offset covered, generation, chunk, count), and put back together from the
//! topic as read, taking the snapshot whose chunk 0 comes last and refusing one cut short.

use std::collections::BTreeMap;

/// State bytes per message (Kafka's default limit is 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// One partition's state at most this large is restored (its JSON is parsed into a tree
/// several times its size).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
/// Chunks a snapshot may have.
const MAX_CHUNKS: u32 = (MAX_STATE_BYTES / CHUNK_BYTES) as u32 + 1;
const MAGIC: &[u8; 4] = b"VST1";

/// One state-topic value: a chunk of one partition's state.
#[derive(Debug)]
pub struct Value<'a> {
    /// `<repartition topic>/<partition>`.
    pub name: &'a str,
    /// The offset the state covers: the partition's next message not in it.
    pub next: i64,
    pub generation: u64,
    pub chunk: u32,
    pub chunks: u32,
    pub data: &'a [u8],
}

/// Why a state-topic value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("not a state value")]
    NotState,
    #[error("truncated")]
    Truncated,
    #[error("partition name is not UTF-8")]
    Name,
    #[error("chunk {chunk} of {chunks}")]
    Chunk { chunk: u32, chunks: u32 },
}

pub(super) fn encode(name: &str, next: i64, generation: u64, chunk: u32, chunks: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + name.len() + 34);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
    v.extend_from_slice(name.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(name.as_bytes()));
    v.extend_from_slice(&next.to_le_bytes());
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(&chunk.to_le_bytes());
    v.extend_from_slice(&chunks.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Reads a state-topic value; refuses anything else without panicking.
pub fn decode(v: &[u8]) -> Result<Value<'_>, ValueError> {
    fn take<const N: usize>(v: &mut &[u8]) -> Result<[u8; N], ValueError> {
        let head = v.get(..N).ok_or(ValueError::Truncated)?;
        *v = v.get(N..).unwrap_or_default();
        head.try_into().map_err(|_| ValueError::Truncated)
    }
    let mut rest = v;
    if take::<4>(&mut rest)? != *MAGIC {
        return Err(ValueError::NotState);
    }
    let len = usize::from(u16::from_le_bytes(take::<2>(&mut rest)?));
    let name = rest.get(..len).ok_or(ValueError::Truncated)?;
    rest = rest.get(len..).unwrap_or_default();
    let name = std::str::from_utf8(name).map_err(|_| ValueError::Name)?;
    let next = i64::from_le_bytes(take::<8>(&mut rest)?);
    let generation = u64::from_le_bytes(take::<8>(&mut rest)?);
    let chunk = u32::from_le_bytes(take::<4>(&mut rest)?);
    let chunks = u32::from_le_bytes(take::<4>(&mut rest)?);
    if chunk >= chunks {
        return Err(ValueError::Chunk { chunk, chunks });
    }
    Ok(Value {
        name,
        next,
        generation,
        chunk,
        chunks,
        data: rest,
    })
}

/// One partition's snapshot as restored.
pub(super) struct Snapshot {
    pub(super) next: i64,
    pub(super) generation: u64,
    pub(super) chunks: u32,
    pub(super) data: Vec<u8>,
}

/// The key of a snapshot's chunk: chunk 0 (written last, naming the generation to take) by
/// the partition alone, the others by generation too.
pub(super) fn chunk_key(name: &str, generation: u64, chunk: usize) -> String {
    if chunk == 0 {
        format!("{name}/0")
    } else {
        format!("{name}/{generation}/{chunk}")
    }
}

/// One partition's chunks as read. The snapshot taken is the one whose chunk 0 comes last in
/// the log (what compaction keeps), whatever the writers' clocks; when a chunk 0 arrives, the
/// chunks of every other generation go, so a long uncompacted history costs no more than one
/// snapshot and one being written.
#[derive(Default)]
pub(super) struct Assembly {
    /// The newest chunk 0 read: generation, offset covered, chunk count.
    head: Option<(u64, i64, u32)>,
    chunks: BTreeMap<u64, BTreeMap<u32, Vec<u8>>>,
    /// Bytes held in `chunks`.
    pub(super) held: usize,
    too_large: bool,
}

impl Assembly {
    /// Takes a chunk, holding at most `room` more bytes (and [`MAX_STATE_BYTES`] twice over).
    pub(super) fn add(&mut self, v: &Value<'_>, room: usize) {
        if v.chunks > MAX_CHUNKS {
            self.too_large = true;
            return;
        }
        if v.chunk == 0 {
            self.head = Some((v.generation, v.next, v.chunks));
            let g = v.generation;
            self.chunks.retain(|generation, _| *generation == g);
            self.held = self.chunks.values().flat_map(|c| c.values()).map(Vec::len).sum();
            self.too_large = false;
        }
        // An empty chunk still costs an entry: count it as a byte.
        let size = v.data.len().max(1);
        if size > room || self.held.saturating_add(size) > MAX_STATE_BYTES.saturating_mul(2) {
            self.too_large = true;
            return;
        }
        let previous = self
            .chunks
            .entry(v.generation)
            .or_default()
            .insert(v.chunk, v.data.to_vec());
        self.held = self
            .held
            .saturating_add(size)
            .saturating_sub(previous.map_or(0, |p| p.len().max(1)));
    }

    pub(super) fn complete(self) -> Result<Snapshot, String> {
        let Some((generation, next, count)) = self.head else {
            return Err("no complete snapshot (a write cut short)".into());
        };
        if self.too_large {
            return Err(format!("over {MAX_STATE_BYTES} bytes"));
        }
        let Some(chunks) = self.chunks.get(&generation) else {
            return Err("snapshot chunks missing".into());
        };
        let mut data = Vec::new();
        for i in 0..count {
            let Some(c) = chunks.get(&i) else {
                return Err(format!("chunk {i} of {count} missing (a write cut short)"));
            };
            data.extend_from_slice(c);
        }
        if data.len() > MAX_STATE_BYTES {
            return Err(format!("over {MAX_STATE_BYTES} bytes"));
        }
        Ok(Snapshot {
            next,
            generation,
            chunks: count,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, next: i64, generation: u64, chunk: u32, chunks: u32, data: &[u8]) -> Vec<u8> {
        encode(name, next, generation, chunk, chunks, data)
    }

    #[test]
    fn a_value_round_trips_and_garbage_is_refused() {
        let v = value("t/3", 42, 7, 1, 2, b"abc");
        let d = decode(&v).expect("decode");
        assert_eq!(
            (d.name, d.next, d.generation, d.chunk, d.chunks, d.data),
            ("t/3", 42, 7, 1, 2, &b"abc"[..])
        );
        for cut in 0..v.len() - 3 {
            assert!(decode(&v[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"VST1\xff\xff").is_err());
        assert!(decode(&value("t/3", 1, 1, 2, 2, b"")).is_err(), "chunk past the count");
        assert!(decode(b"garbage that is long enough to have every field in it").is_err());
    }

    fn add(a: &mut Assembly, v: &[u8]) {
        a.add(&decode(v).expect("decode"), usize::MAX);
    }

    fn taken(a: Assembly) -> (i64, Vec<u8>) {
        let s = a.complete().expect("complete");
        (s.next, s.data)
    }

    #[test]
    fn the_last_complete_snapshot_in_the_log_is_taken() {
        let mut a = Assembly::default();
        add(&mut a, &value("t/0", 10, 1, 1, 2, b"def"));
        add(&mut a, &value("t/0", 10, 1, 0, 2, b"abc"));
        // Generation 2 cut short: chunk 1 written, chunk 0 never.
        add(&mut a, &value("t/0", 20, 2, 1, 2, b"XYZ"));
        assert_eq!(taken(a), (10, b"abcdef".to_vec()));

        let mut b = Assembly::default();
        add(&mut b, &value("t/0", 10, 1, 1, 2, b"def"));
        add(&mut b, &value("t/0", 10, 1, 0, 2, b"abc"));
        add(&mut b, &value("t/0", 30, 3, 0, 1, b"new"));
        assert_eq!(taken(b), (30, b"new".to_vec()));

        // Log order wins over the writers' clocks: a later write from a clock behind.
        let mut c = Assembly::default();
        add(&mut c, &value("t/0", 10, 9, 0, 1, b"old"));
        add(&mut c, &value("t/0", 30, 5, 0, 1, b"later"));
        assert_eq!(taken(c), (30, b"later".to_vec()));

        let mut d = Assembly::default();
        add(&mut d, &value("t/0", 10, 1, 0, 2, b"abc"));
        assert!(d.complete().is_err(), "a chunk missing");
        assert!(Assembly::default().complete().is_err());
    }

    #[test]
    fn what_a_read_holds_is_bounded() {
        // Empty chunks of ever new generations cost an entry each, and count.
        let mut a = Assembly::default();
        for g in 0..10_000u64 {
            a.a_chunk(g);
        }
        assert!(a.held >= 10_000);
        let mut b = Assembly::default();
        b.add(&decode(&value("t/0", 1, 1, 1, 2, &[0u8; 64])).expect("decode"), 10);
        assert!(b.too_large, "no room for it");
        let mut c = Assembly::default();
        add(&mut c, &value("t/0", 1, 1, 0, MAX_CHUNKS + 1, b""));
        assert!(c.complete().is_err(), "more chunks than any snapshot has");
        assert_eq!(chunk_key("t/0", 7, 0), "t/0/0");
        assert_eq!(chunk_key("t/0", 7, 2), "t/0/7/2");
    }

    impl Assembly {
        fn a_chunk(&mut self, generation: u64) {
            self.add(
                &decode(&value("t/0", 1, generation, 1, 2, b"")).expect("decode"),
                usize::MAX,
            );
        }
    }
}
