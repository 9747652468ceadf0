//! Spool append throughput: batches of alert-sized records, with and without fsync.
//!
//! `cargo bench -p verity-spool --bench spool`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verity_spool::{Spool, SpoolLimits};

fn bench(c: &mut Criterion) {
    // A typical alert serializes to 1–2 KB with its evidence.
    let record = vec![b'x'; 1500];
    for (name, sync, batch) in [
        ("fsync_batch_100", true, 100usize),
        ("fsync_batch_1", true, 1),
        ("no_fsync_batch_100", false, 100),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = SpoolLimits {
            max_bytes: u64::MAX,
            max_events: u64::MAX,
            sync,
            ..SpoolLimits::default()
        };
        let (spool, _) = Spool::open(dir.path(), limits).expect("spool");
        let payloads: Vec<Vec<u8>> = (0..batch).map(|_| record.clone()).collect();
        let mut g = c.benchmark_group("spool_append");
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let last = spool.append(black_box(&payloads)).expect("append");
                // Keep the spool from growing without bound: read and acknowledge as a sink would.
                let read = spool.read(batch, usize::MAX).expect("read");
                spool.ack(read.last().map_or(last, |e| e.seq)).expect("ack");
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
