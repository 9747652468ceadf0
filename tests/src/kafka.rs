//! A real Kafka-protocol broker for the tests: `tansu` with in-memory storage, started on a
//! free loopback port and killed when dropped. The binary comes from `VERITY_TANSU`, the test
//! tools cache that scripts/test.sh fills, or `PATH`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Broker {
    child: Child,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where the tansu binary is, if anywhere.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("VERITY_TANSU") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let cached = PathBuf::from(cache).join("verity-tools/tansu/bin/tansu");
    if cached.exists() {
        return Some(cached);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.exists())
    })
}

impl Broker {
    /// Starts a broker, or says why it cannot.
    pub fn start() -> Result<Broker, String> {
        let bin = tansu_bin().ok_or("tansu is not installed (scripts/test.sh installs it)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut b = Broker {
            child,
            port,
            bin,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!("tansu exited with {status}: {}", b.log_text()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(b);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = b.log_text();
        b.stop();
        Err(format!("tansu did not listen within 30 s: {text}"))
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with the broker's own CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), String> {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tansu topic create {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
