//! A webhook receiver on loopback: real TCP, minimal HTTP/1.1, answers from a script of status
//! codes (then 200) and records every request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
pub struct HookReceiver {
    pub addr: std::net::SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<u16>>>,
    stop: Arc<tokio::sync::Notify>,
}

impl HookReceiver {
    pub async fn start(script: &[u16]) -> anyhow::Result<HookReceiver> {
        Self::start_on("127.0.0.1:0", script).await
    }

    pub async fn start_on(addr: &str, script: &[u16]) -> anyhow::Result<HookReceiver> {
        let listener = TcpListener::bind(addr).await?;
        let h = HookReceiver {
            addr: listener.local_addr()?,
            received: Default::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            stop: Default::default(),
        };
        let hh = h.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hh.stop.notified() => return,
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { return };
                        let hh = hh.clone();
                        tokio::spawn(async move { let _ = hh.serve(sock).await; });
                    }
                }
            }
        });
        Ok(h)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn stop(&self) {
        self.stop.notify_waiters();
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    async fn serve(&self, mut sock: tokio::net::TcpStream) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let header_end = loop {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = String::from_utf8_lossy(&buf[header_end..(header_end + len).min(buf.len())])
            .to_string();
        let status = self.script.lock().expect("lock").pop_front().unwrap_or(200);
        self.received.lock().expect("lock").push(Received {
            headers,
            body,
            answered: status,
        });
        let resp =
            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        sock.write_all(resp.as_bytes()).await?;
        Ok(())
    }
}
