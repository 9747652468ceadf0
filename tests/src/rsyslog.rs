//! A real `rsyslogd` on loopback, for testing the syslog sinks against the receiver most SIEM
//! deployments put in front of themselves.
//!
//! [`Rsyslog::start`] writes a RainerScript config into a temporary directory and runs
//! `rsyslogd -n` on it with two `imtcp` listeners on free loopback ports: plain TCP (RFC 6587
//! octet counting or LF framing, whichever the sender uses) and TLS (RFC 5425; anonymous client
//! authentication, server certificate for `localhost` and `127.0.0.1` signed by a CA generated
//! at start). No system inputs are loaded (no `imuxsock`, no `imklog`), rsyslog's own messages
//! go to a file rather than `/dev/log`, and nothing is written outside the temporary directory.
//!
//! Every message rsyslog accepts is written by `omfile` as one JSON object per line, built
//! with rsyslog's own property replacer, so tests see the fields exactly as rsyslog parsed
//! them. [`Rsyslog::messages`] returns those objects with these keys (all strings unless
//! noted):
//!
//! | key                | rsyslog property             | notes                                     |
//! |--------------------|------------------------------|-------------------------------------------|
//! | `listener`         | `inputname`                  | `"tcp"` or `"tls"`                        |
//! | `pri`              | `pri`                        | number                                    |
//! | `facility`         | `syslogfacility`             | number                                    |
//! | `severity`         | `syslogseverity`             | number                                    |
//! | `protocol_version` | `protocol-version`           | `"1"` when parsed as RFC 5424             |
//! | `timestamp`        | `timereported` (RFC 3339)    | precision and offset as sent              |
//! | `hostname`         | `hostname`                   |                                           |
//! | `app_name`         | `app-name`                   | `"-"` when nil                            |
//! | `procid`           | `procid`                     | `"-"` when nil                            |
//! | `msgid`            | `msgid`                      | `"-"` when nil                            |
//! | `structured_data`  | `structured-data`            | raw SD text, escapes (`\]`, `\"`) kept    |
//! | `msg`              | `msg`                        | a UTF-8 BOM, if sent, is kept             |
//! | `rawmsg`           | `rawmsg`                     | the frame's content (no length prefix)    |
//! | `fromhost_ip`      | `fromhost-ip`                |                                           |
//!
//! rsyslog runs with its stock parser settings, except `maxMessageSize` (64 KiB instead of
//! 8 KiB): control characters (< 0x20) in a message are escaped on receipt as `#` plus three
//! octal digits (a tab becomes `#011`, LF `#012`); bytes ≥ 0x80 (UTF-8) pass through.
//! A nil (`-`) HOSTNAME, APP-NAME, PROCID or MSGID is reported as `"-"`, but a nil TIMESTAMP
//! is replaced by the time of receipt. A message that is not valid RFC 5424 (e.g. no version
//! after the PRI) is parsed as RFC 3164 instead: check `protocol_version`.
//! With the `gtls` driver the stock priority string allows TLS 1.2 only; `ossl` negotiates 1.3.

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name in the server certificate (it also carries the IP SAN 127.0.0.1).
const SERVER_NAME: &str = "localhost";
/// How long rsyslogd gets to open both listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh ports are tried this many times if another process took one first.
const START_ATTEMPTS: usize = 3;

/// The TLS network stream driver rsyslog uses for the TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsDriver {
    /// GnuTLS (`lmnsd_gtls`, Debian package `rsyslog-gnutls`).
    Gtls,
    /// OpenSSL (`lmnsd_ossl`, Debian package `rsyslog-openssl`).
    Ossl,
}

impl TlsDriver {
    /// The driver's name in rsyslog's config (`StreamDriver.Name`).
    pub fn name(self) -> &'static str {
        match self {
            TlsDriver::Gtls => "gtls",
            TlsDriver::Ossl => "ossl",
        }
    }
}

/// A running `rsyslogd` with a plain TCP and a TLS listener on loopback.
pub struct Rsyslog {
    child: Option<Child>,
    dir: tempfile::TempDir,
    tcp_port: u16,
    tls_port: u16,
    driver: TlsDriver,
    ca_pem: PathBuf,
    messages_path: PathBuf,
    stderr_path: PathBuf,
    internal_log_path: PathBuf,
}

impl Rsyslog {
    /// Starts rsyslogd with the GnuTLS driver, or with OpenSSL if that fails (e.g. only
    /// `rsyslog-openssl` is installed). Returns `Err(reason)` if rsyslogd is not installed or
    /// does not come up; the reason includes rsyslog's own output.
    pub fn start() -> Result<Rsyslog, String> {
        let rsyslogd = find_rsyslogd()?;
        match Self::start_driver(&rsyslogd, TlsDriver::Gtls) {
            Ok(r) => Ok(r),
            Err(gtls) => Self::start_driver(&rsyslogd, TlsDriver::Ossl)
                .map_err(|ossl| format!("with gtls: {gtls}\nwith ossl: {ossl}")),
        }
    }

    /// Starts rsyslogd using the given TLS driver for the TLS listener.
    pub fn start_with(driver: TlsDriver) -> Result<Rsyslog, String> {
        Self::start_driver(&find_rsyslogd()?, driver)
    }

    fn start_driver(rsyslogd: &Path, driver: TlsDriver) -> Result<Rsyslog, String> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
            let mut rs = Rsyslog {
                child: None,
                tcp_port: crate::free_port(),
                tls_port: crate::free_port(),
                driver,
                ca_pem: dir.path().join("ca.pem"),
                messages_path: dir.path().join("messages.jsonl"),
                stderr_path: dir.path().join("rsyslogd.stderr"),
                internal_log_path: dir.path().join("rsyslogd-internal.log"),
                dir,
            };
            match rs.launch(rsyslogd) {
                Ok(()) => return Ok(rs),
                Err(e) => {
                    let output = rs.stderr();
                    rs.stop();
                    last_error = format!("{e}\nrsyslogd output:\n{output}");
                    if !output.contains("Could not create tcp listener") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    fn launch(&mut self, rsyslogd: &Path) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        write_certificates(&dir, &self.ca_pem)?;
        let work = dir.join("work");
        std::fs::create_dir(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let config_path = dir.join("rsyslog.conf");
        let config = self.config(&dir)?;
        std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let stderr = std::fs::File::create(&self.stderr_path).map_err(|e| format!("stderr file: {e}"))?;
        let stdout = stderr.try_clone().map_err(|e| format!("stderr file: {e}"))?;
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&config_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", rsyslogd.display()))?;
        self.child = Some(child);
        self.wait_listening()
    }

    /// Waits until the plain port accepts a connection and the TLS port is listening. The TLS
    /// port is checked in /proc/net/tcp rather than by connecting, because a connection closed
    /// before the handshake makes rsyslog log a TLS error that would clutter [`Rsyslog::stderr`].
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let (mut tcp_up, mut tls_up) = (false, false);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("rsyslogd exited early with {status}"));
            }
            if self.stderr().contains("Could not create tcp listener") {
                return Err("rsyslogd could not open a listener".into());
            }
            tcp_up = tcp_up
                || TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, self.tcp_port).into(), Duration::from_secs(1))
                    .is_ok();
            tls_up = tls_up || is_listening(self.tls_port);
            if tcp_up && tls_up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "rsyslogd did not open its listeners within {READY_TIMEOUT:?} (tcp {}: {tcp_up}, tls {}: {tls_up})",
            self.tcp_port, self.tls_port
        ))
    }

    fn config(&self, dir: &Path) -> Result<String, String> {
        let work = quoted(&dir.join("work"))?;
        let messages = quoted(&self.messages_path)?;
        let internal = quoted(&self.internal_log_path)?;
        let ca = quoted(&self.ca_pem)?;
        let cert = quoted(&dir.join("server-cert.pem"))?;
        let key = quoted(&dir.join("server-key.pem"))?;
        let (tcp_port, tls_port, driver) = (self.tcp_port, self.tls_port, self.driver.name());
        Ok(format!(
            r#"# Generated by verity-e2e (tests/src/rsyslog.rs).
# processInternalMessages: rsyslog's own messages go to the default ruleset below instead of
# being sent to the system's /dev/log.
global(workDirectory={work} maxMessageSize="64k" processInternalMessages="on")

module(load="imtcp")

template(name="verity_json" type="list" option.jsonf="on") {{
  property(outname="listener" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf" datatype="number")
  property(outname="facility" name="syslogfacility" format="jsonf" datatype="number")
  property(outname="severity" name="syslogseverity" format="jsonf" datatype="number")
  property(outname="protocol_version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="rawmsg" name="rawmsg" format="jsonf")
  property(outname="fromhost_ip" name="fromhost-ip" format="jsonf")
}}

ruleset(name="verity_received") {{
  action(type="omfile" file={messages} template="verity_json" flushOnTXEnd="on" asyncWriting="off")
}}

input(type="imtcp" name="tcp" address="127.0.0.1" port="{tcp_port}" ruleset="verity_received")

input(type="imtcp" name="tls" address="127.0.0.1" port="{tls_port}" ruleset="verity_received"
      streamDriver.name="{driver}" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CAFile={ca} streamDriver.CertFile={cert} streamDriver.KeyFile={key})

# rsyslog's own messages (errors, start/stop notices) go to the default ruleset.
action(type="omfile" file={internal} template="RSYSLOG_FileFormat" flushOnTXEnd="on" asyncWriting="off")
"#
        ))
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The TLS driver the TLS listener uses.
    pub fn tls_driver(&self) -> TlsDriver {
        self.driver
    }

    /// The CA certificate (PEM) that signed the server certificate; clients should trust it.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// The DNS name in the server certificate; it also has the IP SAN 127.0.0.1.
    pub fn server_name(&self) -> &str {
        SERVER_NAME
    }

    /// The temporary directory holding config, certificates and output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every message rsyslog has written so far, one JSON object each (see the module docs for
    /// the keys). A line rsyslog is still writing is left out; a line that is not JSON is
    /// returned as `{"unparsed": line}`.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let Ok(bytes) = std::fs::read(&self.messages_path) else {
            return Vec::new();
        };
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) => &bytes[..=end],
            None => return Vec::new(),
        };
        complete
            .split(|&b| b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| {
                serde_json::from_slice(line)
                    .unwrap_or_else(|_| serde_json::json!({ "unparsed": String::from_utf8_lossy(line) }))
            })
            .collect()
    }

    /// Waits until at least `n` messages are written or `timeout` passes; returns what is there.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops rsyslogd: SIGTERM, then SIGKILL if it has not exited after 5 s. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// rsyslogd's stdout/stderr, followed by its internal messages log, for diagnostics.
    pub fn stderr(&self) -> String {
        let mut out = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if let Ok(internal) = std::fs::read_to_string(&self.internal_log_path)
            && !internal.is_empty()
        {
            out.push_str("--- rsyslogd internal messages ---\n");
            out.push_str(&internal);
        }
        out
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$RSYSLOGD`, else `rsyslogd` in `$PATH` or the sbin directories (often not in a user's PATH).
fn find_rsyslogd() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RSYSLOGD") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("$RSYSLOGD={} does not exist", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("rsyslogd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls rsyslog-openssl, or set $RSYSLOGD)"
                .to_string()
        })
}

/// A path as a RainerScript string literal.
fn quoted(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if s.contains(['"', '\\', '\n']) {
        return Err(format!(
            "{s:?}: quotes, backslashes and newlines are not supported in rsyslog paths"
        ));
    }
    Ok(format!("\"{s}\""))
}

/// Writes `ca.pem` (at `ca_path`), `server-cert.pem` and `server-key.pem` (PKCS#8) into `dir`:
/// an ECDSA P-256 CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
fn write_certificates(dir: &Path, ca_path: &Path) -> Result<(), String> {
    let pki = crate::TestPki::generate("verity-e2e test CA", &[SERVER_NAME])?;
    let write = |path: &Path, contents: &str| {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(contents.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(ca_path, &pki.ca_pem)?;
    write(&dir.join("server-cert.pem"), &pki.cert_pem)?;
    write(&dir.join("server-key.pem"), &pki.key_pem)
}

/// Whether something listens on 127.0.0.1:`port` (or the IPv4 wildcard), per /proc/net/tcp.
/// Falls back to a connection attempt where /proc is unavailable.
fn is_listening(port: u16) -> bool {
    const LISTEN: &str = "0A";
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok();
    };
    let wanted = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        state == LISTEN && wanted.iter().any(|w| w == local)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};

    const WAIT: Duration = Duration::from_secs(10);

    const ALERT: &str = r#"<34>1 2026-11-22T10:00:00.000Z host.example verity - verity.firing [verity@32473 alert_id="a-1" rule="r\]x"] CEF:0|Verity|Verity|0.1|r|t|5|msg=hi ünï"#;
    const SECOND: &str = "<134>1 2026-11-22T10:00:01.5+02:00 host2.example verity 4711 verity.resolved - LEEF:2.0|Verity|Verity|0.1|r|x09|cat=tést";

    /// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`, the length in bytes.
    fn frame(msg: &str) -> Vec<u8> {
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(msg.as_bytes());
        out
    }

    fn assert_alert(m: &serde_json::Value, listener: &str) {
        assert_eq!(m["listener"], listener, "{m}");
        assert_eq!(m["pri"], 34, "{m}");
        assert_eq!(m["facility"], 4, "{m}");
        assert_eq!(m["severity"], 2, "{m}");
        assert_eq!(m["protocol_version"], "1", "{m}");
        assert_eq!(m["timestamp"], "2026-11-22T10:00:00.000Z", "{m}");
        assert_eq!(m["hostname"], "host.example", "{m}");
        assert_eq!(m["app_name"], "verity", "{m}");
        assert_eq!(m["procid"], "-", "{m}");
        assert_eq!(m["msgid"], "verity.firing", "{m}");
        assert_eq!(
            m["structured_data"], r#"[verity@32473 alert_id="a-1" rule="r\]x"]"#,
            "{m}"
        );
        assert_eq!(m["msg"], "CEF:0|Verity|Verity|0.1|r|t|5|msg=hi ünï", "{m}");
        assert_eq!(m["rawmsg"], ALERT, "{m}");
        assert_eq!(m["fromhost_ip"], "127.0.0.1", "{m}");
    }

    fn assert_second(m: &serde_json::Value, listener: &str) {
        assert_eq!(m["listener"], listener, "{m}");
        assert_eq!(m["pri"], 134, "{m}");
        assert_eq!(m["facility"], 16, "{m}");
        assert_eq!(m["severity"], 6, "{m}");
        assert_eq!(m["timestamp"], "2026-11-22T10:00:01.5+02:00", "{m}");
        assert_eq!(m["hostname"], "host2.example", "{m}");
        assert_eq!(m["app_name"], "verity", "{m}");
        assert_eq!(m["procid"], "4711", "{m}");
        assert_eq!(m["msgid"], "verity.resolved", "{m}");
        assert_eq!(m["structured_data"], "-", "{m}");
        assert_eq!(m["msg"], "LEEF:2.0|Verity|Verity|0.1|r|x09|cat=tést", "{m}");
    }

    fn start(driver: Option<TlsDriver>) -> Option<Rsyslog> {
        let started = match driver {
            None => Rsyslog::start(),
            Some(d) => Rsyslog::start_with(d),
        };
        crate::require(started, "rsyslogd")
    }

    #[test]
    fn tcp_octet_counting_frames_and_fields() {
        let Some(rs) = start(None) else { return };
        let mut sock = TcpStream::connect((Ipv4Addr::LOCALHOST, rs.tcp_port())).unwrap();
        // Two frames in one write.
        let mut both = frame(ALERT);
        both.extend(frame(SECOND));
        sock.write_all(&both).unwrap();
        // A frame split across writes (inside the length and inside the body).
        let third = frame("<14>1 - - - - - - split frame");
        for piece in [&third[..1], &third[1..10], &third[10..]] {
            sock.write_all(piece).unwrap();
            sock.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = rs.wait_for(3, WAIT);
        assert_eq!(got.len(), 3, "{got:#?}\n{}", rs.stderr());
        assert_alert(&got[0], "tcp");
        assert_second(&got[1], "tcp");
        assert_eq!(got[2]["msg"], "split frame");
        assert_eq!(got[2]["hostname"], "-", "rsyslog keeps the nil hostname: {}", got[2]);
        assert_eq!(got[2]["app_name"], "-");
    }

    #[test]
    fn control_characters_and_bom_as_rsyslog_reports_them() {
        let Some(rs) = start(None) else { return };
        let mut sock = TcpStream::connect((Ipv4Addr::LOCALHOST, rs.tcp_port())).unwrap();
        sock.write_all(&frame("<14>1 - h a - - - \u{feff}tab\there\nnext"))
            .unwrap();
        let got = rs.wait_for(1, WAIT);
        assert_eq!(got.len(), 1, "{}", rs.stderr());
        assert_eq!(got[0]["msg"], "\u{feff}tab#011here#012next");
    }

    fn tls_client(rs: &Rsyslog, name: ServerName<'static>) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(rs.ca_pem_path()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, rs.tls_port())).unwrap();
        rustls::StreamOwned::new(conn, sock)
    }

    /// Sends two frames in one TLS write; `None` if rsyslog is unavailable, else the negotiated version.
    fn tls_round_trip(driver: TlsDriver, name: ServerName<'static>) -> Option<Option<rustls::ProtocolVersion>> {
        let rs = start(Some(driver))?;
        assert_eq!(rs.tls_driver(), driver);
        let mut tls = tls_client(&rs, name);
        let mut both = frame(ALERT);
        both.extend(frame(SECOND));
        tls.write_all(&both).unwrap();
        tls.flush().unwrap();
        let version = tls.conn.protocol_version();
        let got = rs.wait_for(2, WAIT);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        assert_eq!(got.len(), 2, "{got:#?}\n{}", rs.stderr());
        assert_alert(&got[0], "tls");
        assert_second(&got[1], "tls");
        Some(version)
    }

    #[test]
    fn tls_gtls() {
        let name = ServerName::try_from("localhost").unwrap();
        if let Some(version) = tls_round_trip(TlsDriver::Gtls, name) {
            assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
        }
    }

    #[test]
    fn tls_ossl_by_ip_address() {
        let name = ServerName::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        if let Some(version) = tls_round_trip(TlsDriver::Ossl, name) {
            assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        }
    }

    #[test]
    fn tls_rejects_plaintext_and_keeps_serving() {
        let Some(rs) = start(None) else { return };
        let mut plain = TcpStream::connect((Ipv4Addr::LOCALHOST, rs.tls_port())).unwrap();
        plain.write_all(&frame(ALERT)).unwrap();
        plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = plain.read(&mut [0u8; 64]);
        let mut tls = tls_client(&rs, ServerName::try_from("localhost").unwrap());
        tls.write_all(&frame(ALERT)).unwrap();
        tls.flush().unwrap();
        let got = rs.wait_for(1, WAIT);
        assert_eq!(got.len(), 1, "{got:#?}\n{}", rs.stderr());
        assert_alert(&got[0], "tls");
    }

    #[test]
    fn stop_is_idempotent_and_nothing_leaks_outside_the_dir() {
        let Some(mut rs) = start(None) else { return };
        let config = std::fs::read_to_string(rs.dir().join("rsyslog.conf")).unwrap();
        assert!(!config.contains("imuxsock") && !config.contains("imklog") && !config.contains("/var/"));
        rs.stop();
        rs.stop();
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, rs.tcp_port())).is_err());
    }
}
