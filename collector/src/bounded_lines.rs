//! Lines from files and stdin (`verity normalize`, `verity replay`) read with a bound on what
//! one line may hold in memory: a file without newlines is read as one over-long line that
//! is skipped (and reported), not gathered whole.

#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]

use std::io::{self, BufRead};

/// Reads the next line onto the end of `buf` (so that many lines can share one buffer),
/// keeping at most `max` bytes of it; the rest of an over-long line is read and dropped.
/// Returns the line's full length (its newline included), or `None` at the end of input. A
/// length over `max` means `buf` gained only the line's start.
pub fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<u64>> {
    let start = buf.len();
    let mut total = 0u64;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((total > 0).then_some(total));
        }
        let (taken, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i.saturating_add(1), true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len().saturating_sub(start));
        buf.extend_from_slice(chunk.get(..taken.min(room)).unwrap_or_default());
        total = total.saturating_add(taken as u64);
        reader.consume(taken);
        if done {
            return Ok(Some(total));
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_measured_not_kept() {
        let input = format!("short\n{}\nlast", "x".repeat(100));
        let mut reader = io::BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut reader, &mut buf, 10).expect("read"), Some(6));
        assert_eq!(buf, b"short\n");
        assert_eq!(read_line(&mut reader, &mut buf, 10).expect("read"), Some(101));
        assert_eq!(buf.len(), 16, "the long line's first 10 bytes after the short line");
        assert_eq!(&buf[6..], b"xxxxxxxxxx");
        buf.clear();
        assert_eq!(read_line(&mut reader, &mut buf, 10).expect("read"), Some(4));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut reader, &mut buf, 10).expect("read"), None);
        assert_eq!(buf, b"last", "nothing appended at the end of input");
    }
}
