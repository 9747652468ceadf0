//! JSON lines on standard output or appended to a file (the embedded defaults).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use verity_model::alert::Alert;

use crate::{BoxFuture, SendResult, Sink, SinkError};

/// Opens a JSON-lines file for appending. A crash in the middle of a write can leave a torn
/// last line; a newline is added after it so that it stays one bad line and every later line
/// is whole.
pub fn open_lines(path: &Path) -> std::io::Result<File> {
    let mut f = OpenOptions::new().create(true).read(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    Ok(f)
}

enum Target {
    Stdout,
    File(PathBuf, Mutex<File>),
}

pub struct JsonLines {
    target: Target,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self { target: Target::Stdout }
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = open_lines(path)?;
        Ok(Self {
            target: Target::File(path.to_path_buf(), Mutex::new(f)),
        })
    }

    fn write(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(alerts.len() * 1024);
        for a in alerts {
            serde_json::to_writer(&mut buf, a).map_err(|e| SinkError::permanent(e.to_string()))?;
            buf.push(b'\n');
        }
        let io = |e: std::io::Error| SinkError::retryable(format!("write failed: {e}"));
        match &self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush()).map_err(io)
            }
            Target::File(_, f) => {
                let mut f = match f.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                f.write_all(&buf).and_then(|()| f.flush()).map_err(io)
            }
        }
    }
}

impl Sink for JsonLines {
    fn kind(&self) -> &'static str {
        match self.target {
            Target::Stdout => "stdout",
            Target::File(..) => "file",
        }
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move { self.write(alerts).map(|()| Vec::new()) })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            match &self.target {
                Target::Stdout => Ok("standard output".to_string()),
                Target::File(p, _) => Ok(format!("appending to {}", p.display())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_closed_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\"").unwrap();
        let mut f = open_lines(&path).unwrap();
        f.write_all(b"{\"id\":\"b\"}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"id\":\"a\"}\n{\"id\"\n{\"id\":\"b\"}\n");
    }
}
