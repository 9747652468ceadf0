//! An error with its causes on one line, for logs and for messages that travel as text (a
//! sink's failure reason, a dead-letter entry).

use std::error::Error;
use std::fmt::Write;

/// `e`, then each of its sources, joined by `": "`.
pub fn one_line(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(line, ": {s}");
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot send")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_is_on_the_line() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(one_line(&e), "cannot send: connection refused");
        assert_eq!(one_line(&std::io::Error::other("alone")), "alone");
    }
}
