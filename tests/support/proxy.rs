//! A TCP proxy in front of a partner, to cut it, answer for it, or read what was sent.

use super::*;

/// A TCP proxy that can be cut: while down, it drops every connection (open ones too), as
/// a network partition or a crashed service would look to a client. It also keeps what
/// clients sent, to check requests on the wire.
pub struct Proxy {
    pub url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
    answer: Arc<std::sync::Mutex<Option<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `target` (`http://host:port`), up.
    pub async fn start(target: &str) -> TestResult<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = Arc::new(std::sync::Mutex::new(None::<String>));
        let (up2, cut2, connections2, sent2, answer2) = (
            up.clone(),
            cut.clone(),
            connections.clone(),
            sent.clone(),
            answer.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = cut2.lock().unwrap().clone();
                if let Some(response) = answer2.lock().unwrap().clone() {
                    let sent = sent2.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = answer_every_request(inbound, response, sent) => {}
                            () = cut.cancelled() => {}
                        }
                    });
                    continue;
                }
                let (target, sent) = (target.clone(), sent2.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_client.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::select! {
                        _ = futures_util::future::join(upstream, downstream) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            url,
            up,
            cut,
            connections,
            sent,
            answer,
            _task: task,
        })
    }

    /// From the next connection on, answers every request with `response` (a whole HTTP/1.1
    /// response) instead of forwarding; `None` forwards again. Stands in for what the
    /// emulator does not do: a Step Functions that refuses stepgate's request signature
    /// (clock skew, expired session) as AWS does.
    pub fn answer_with(&self, response: Option<String>) {
        *self.answer.lock().unwrap() = response;
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections attempted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Everything clients sent so far, as text.
    pub fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// Reads HTTP/1.1 requests (head, then a `Content-Length` body) and answers each with
/// `response`, until the client closes.
async fn answer_every_request(
    mut stream: tokio::net::TcpStream,
    response: String,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffered = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffered[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffered.len() < head_end + length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        }
        sent.lock()
            .unwrap()
            .extend_from_slice(&buffered[..head_end + length]);
        buffered.drain(..head_end + length);
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An AWS JSON 1.0 error answer, as Step Functions sends one.
pub fn aws_json_error(status: u16, code: &str, message: &str) -> String {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.0\r\n\
         x-amzn-requestid: test\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}
