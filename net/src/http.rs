//! The small HTTP/1.1 endpoint both binaries serve for Prometheus (`/metrics`) and a JSON
//! status (`/status`): GET only, one response per connection; a few dozen lines instead of a
//! web framework, since scrapers and `curl` are its only clients.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers a path with (content type, body), or None for 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// Serves `handler` on `listener` until `shutdown` resolves.
pub async fn serve_http(listener: TcpListener, handler: Handler, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Read the request head (bounded, with a deadline: a silent client cannot hold it).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let (status, ctype, body) = if method != "GET" {
                ("405 Method Not Allowed", "text/plain", "GET only\n".to_string())
            } else {
                match handler(path.split('?').next().unwrap_or(path)) {
                    Some((ctype, body)) => ("200 OK", ctype, body),
                    None => ("404 Not Found", "text/plain", "not found\n".to_string()),
                }
            };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Prometheus text exposition, one metric at a time.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.0.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}
