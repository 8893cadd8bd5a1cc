//! A small HTTP/1.1 client over a plain TCP socket, for the console's API and its SSE stream:
//! the tests talk to the real listener the way curl or a browser would, and see status codes,
//! headers and bodies exactly as sent.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `Authorization: Basic ...` for `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn send_head(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to the console on {port}: {e}"));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write request");
    s.write_all(body).await.expect("write body");
    s
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = i + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// One request, the whole answer (deadline 15 s: a command may wait 5 s for its gateway).
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = send_head(port, method, path, headers, body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete answer in 15 s"))
        .expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let (status, headers) = parse_head(&head);
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// An open `GET /api/stream`: server-sent events as they come.
pub struct Sse {
    stream: BufReader<TcpStream>,
    buf: Vec<u8>,
    text: String,
}

impl Sse {
    pub async fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Sse {
        let s = send_head(port, "GET", path, headers, b"").await;
        let mut sse = Sse {
            stream: BufReader::new(s),
            buf: Vec::new(),
            text: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sse.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            sse.read_more(deadline).await.expect("SSE headers");
        }
        let split = sse
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&sse.buf[..split]).to_string();
        let (status, _) = parse_head(&head);
        assert_eq!(status, 200, "GET {path}: {head}");
        sse.buf.drain(..split + 4);
        sse
    }

    async fn read_more(&mut self, deadline: Instant) -> Option<()> {
        let mut chunk = [0u8; 8192];
        match timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
            _ => None,
        }
    }

    /// Moves complete chunks of the chunked body into `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let Ok(size) =
                usize::from_str_radix(String::from_utf8_lossy(&self.buf[..i]).trim(), 16)
            else {
                return;
            };
            if self.buf.len() < i + 2 + size + 2 {
                return;
            }
            let data = self.buf[i + 2..i + 2 + size].to_vec();
            self.text.push_str(&String::from_utf8_lossy(&data));
            self.buf.drain(..i + 2 + size + 2);
        }
    }

    /// The next event (name, data as JSON), or `None` at the deadline.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = Instant::now() + within;
        loop {
            self.dechunk();
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
            self.read_more(deadline).await?;
        }
    }

    /// The first event named `name` whose data satisfies `pred`, or a panic at the deadline.
    pub async fn expect(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some((n, v)) if n == name && pred(&v) => return v,
                Some(_) => {}
                None => panic!("no SSE event {name:?} as expected within {within:?}"),
            }
        }
    }
}
