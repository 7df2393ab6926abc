//! A minimal SMTP server on loopback that records what it receives, for tests. Real TCP, real
//! SMTP dialogue (EHLO/MAIL/RCPT/DATA with dot-unstuffing), so lettre talks to it as to any MTA.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub rcpt: Vec<String>,
    pub data: String,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub addr: std::net::SocketAddr,
    pub mails: Arc<Mutex<Vec<ReceivedMail>>>,
    /// While true, every transaction is refused with 451 (a temporary failure).
    pub failing: Arc<AtomicBool>,
    /// Connections still to be held: accepted, never greeted, kept open until the sink stops
    /// (a sender stuck mid-send).
    holding: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
}

impl SmtpSink {
    pub async fn start() -> anyhow::Result<SmtpSink> {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> anyhow::Result<SmtpSink> {
        let listener = TcpListener::bind(addr).await?;
        let sink = SmtpSink {
            addr: listener.local_addr()?,
            mails: Default::default(),
            failing: Default::default(),
            holding: Default::default(),
            stop: Default::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.stop.notified() => return,
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { return };
                        let s = s.clone();
                        tokio::spawn(async move { let _ = s.session(sock).await; });
                    }
                }
            }
        });
        Ok(sink)
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.mails.lock().expect("lock").clone()
    }

    pub fn stop(&self) {
        self.stop.notify_waiters();
    }

    /// The next `n` connections are held: accepted and never greeted, so their sender waits
    /// (until its own timeout, or until it is gone).
    pub fn hold_next(&self, n: usize) {
        self.holding.store(n, Ordering::SeqCst);
    }

    async fn session(&self, sock: tokio::net::TcpStream) -> anyhow::Result<()> {
        let held = self
            .holding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if held {
            // Read (and drop) whatever comes until the sender goes away.
            let mut sock = sock;
            let mut buf = [0u8; 512];
            while tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await? > 0 {}
            return Ok(());
        }
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 sink ESMTP\r\n").await?;
        let mut from = String::new();
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                w.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?;
            } else if upper.starts_with("MAIL FROM:") {
                if self.failing.load(Ordering::SeqCst) {
                    w.write_all(b"451 4.3.0 try again later\r\n").await?;
                    continue;
                }
                from = cmd[10..]
                    .trim()
                    .trim_matches(['<', '>'])
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .trim_matches(['<', '>'])
                    .to_string();
                rcpt.clear();
                w.write_all(b"250 OK\r\n").await?;
            } else if upper.starts_with("RCPT TO:") {
                rcpt.push(cmd[8..].trim().trim_matches(['<', '>']).to_string());
                w.write_all(b"250 OK\r\n").await?;
            } else if upper == "DATA" {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                self.mails.lock().expect("lock").push(ReceivedMail {
                    from: from.clone(),
                    rcpt: rcpt.clone(),
                    data,
                });
                w.write_all(b"250 OK queued\r\n").await?;
            } else if upper == "QUIT" {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else if upper == "RSET" || upper == "NOOP" {
                w.write_all(b"250 OK\r\n").await?;
            } else {
                w.write_all(b"502 not implemented\r\n").await?;
            }
        }
    }
}

/// Decodes a quoted-printable or base64 MIME part body well enough for assertions: returns the
/// raw message with soft line breaks removed and `=XX` decoded.
pub fn decode_qp(s: &str) -> String {
    let joined = s.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A received mail taken apart: headers of the top level, and the decoded text and HTML parts.
#[derive(Debug, Clone)]
pub struct ParsedMail {
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub html: String,
    pub content_type: String,
}

impl ParsedMail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn split_headers(raw: &str) -> (Vec<(String, String)>, &str) {
    let raw_norm = raw;
    let (head, body) = match raw_norm.find("\r\n\r\n") {
        Some(i) => (&raw_norm[..i], &raw_norm[i + 4..]),
        None => match raw_norm.find("\n\n") {
            Some(i) => (&raw_norm[..i], &raw_norm[i + 2..]),
            None => (raw_norm, ""),
        },
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (headers, body)
}

fn decode_body(headers: &[(String, String)], body: &str) -> String {
    let enc = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-transfer-encoding"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    match enc.as_str() {
        "base64" => {
            use base64::Engine;
            let clean: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .unwrap_or_default(),
            )
            .into_owned()
        }
        "quoted-printable" => decode_qp(body),
        _ => body.to_string(),
    }
}

/// Parses a multipart/alternative mail as lettre writes it.
pub fn parse(raw: &str) -> ParsedMail {
    let (headers, body) = split_headers(raw);
    let ct = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut text = String::new();
    let mut html = String::new();
    if let Some(b) = ct.split("boundary=").nth(1) {
        let boundary = b
            .trim_matches('"')
            .split(';')
            .next()
            .unwrap_or("")
            .trim_matches('"');
        for part in body.split(&format!("--{boundary}")) {
            let part = part.trim_start_matches(['\r', '\n']);
            if part.starts_with("--") || part.trim().is_empty() {
                continue;
            }
            let (ph, pb) = split_headers(part);
            let pct = ph
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.to_ascii_lowercase())
                .unwrap_or_default();
            let decoded = decode_body(&ph, pb);
            if pct.starts_with("text/plain") {
                text = decoded;
            } else if pct.starts_with("text/html") {
                html = decoded;
            }
        }
    } else {
        text = decode_body(&headers, body);
    }
    ParsedMail {
        headers,
        text,
        html,
        content_type: ct,
    }
}
