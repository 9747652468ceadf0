//! Append, read, acknowledge, recovery after a torn write, and the size limits.

use super::*;

fn limits() -> SpoolLimits {
    SpoolLimits {
        max_bytes: 1 << 20,
        max_events: 1000,
        segment_bytes: 200,
        sync: true,
    }
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("alert-{i}").into_bytes()).collect()
}

#[test]
fn append_read_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, rec) = Spool::open(dir.path(), limits()).unwrap();
    assert_eq!(rec, Recovery::default());
    assert_eq!(spool.append(&payloads(0..10)).unwrap(), 10);
    let got = spool.read(4, 1 << 20).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].payload, b"alert-0");
    assert_eq!(got[3].seq, 4);
    spool.ack(4).unwrap();
    assert_eq!(spool.depth().events, 6);
    drop(spool);

    // Reopen: only the unacknowledged six come back, in order.
    let (spool, rec) = Spool::open(dir.path(), limits()).unwrap();
    assert_eq!(rec.pending_events, 6);
    let got = spool.read(100, 1 << 20).unwrap();
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(got[0].payload, b"alert-4");
    // Numbering continues after the recovered records.
    assert_eq!(spool.append(&payloads(10..11)).unwrap(), 11);
    assert_eq!(spool.read(10, 1 << 20).unwrap()[0].seq, 11);
    spool.ack(11).unwrap();
    assert!(spool.is_drained());
    assert_eq!(spool.depth().events, 0);
    // Small segments: delivered ones are deleted, the one being written stays.
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert_eq!(segs, 1);
}

#[test]
fn torn_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), limits()).unwrap();
    spool.append(&payloads(0..3)).unwrap();
    drop(spool);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (spool, rec) = Spool::open(dir.path(), limits()).unwrap();
    assert_eq!(rec.pending_events, 3);
    assert_eq!(rec.truncated_bytes, 6);
    assert_eq!(spool.append(&payloads(3..4)).unwrap(), 4);
    let got = spool.read(10, 1 << 20).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].payload, b"alert-3");
}

#[test]
fn full_spool_waits_for_acks() {
    let dir = tempfile::tempdir().unwrap();
    let l = SpoolLimits {
        max_events: 5,
        ..limits()
    };
    let (spool, _) = Spool::open(dir.path(), l).unwrap();
    let spool = std::sync::Arc::new(spool);
    spool.append(&payloads(0..5)).unwrap();
    let s2 = spool.clone();
    let writer = std::thread::spawn(move || s2.append(&payloads(5..7)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "append must wait while the spool is full");
    let got = spool.read(2, 1 << 20).unwrap();
    spool.ack(got[1].seq).unwrap();
    assert_eq!(writer.join().unwrap(), 7);
    assert_eq!(spool.depth().events, 5);
}

#[test]
fn max_bytes_limits_a_read_but_not_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), limits()).unwrap();
    spool.append(&[vec![b'x'; 500], vec![b'y'; 10]]).unwrap();
    assert_eq!(spool.read(10, 100).unwrap().len(), 1);
    assert_eq!(spool.read(10, 100).unwrap().len(), 1);
    assert!(spool.read(10, 100).unwrap().is_empty());
}

#[test]
fn closed_spool_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), limits()).unwrap();
    spool.close();
    assert!(matches!(spool.append(&payloads(0..1)), Err(SpoolError::Closed { .. })));
}

#[tokio::test]
async fn wait_drained_returns_when_the_last_record_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), limits()).unwrap();
    let spool = std::sync::Arc::new(spool);
    // Empty: at once.
    tokio::time::timeout(Duration::from_secs(5), spool.wait_drained())
        .await
        .unwrap();
    spool.append(&payloads(0..3)).unwrap();
    let waiter = tokio::spawn({
        let spool = spool.clone();
        async move { spool.wait_drained().await }
    });
    spool.ack(2).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "two of three acknowledged is not drained");
    spool.ack(3).unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    // Closing ends the wait too (the deadline gave up on the rest).
    spool.append(&payloads(3..4)).unwrap();
    spool.close();
    tokio::time::timeout(Duration::from_secs(5), spool.wait_drained())
        .await
        .unwrap();
}
