//! The HTTP endpoint both binaries serve: Prometheus `/metrics` and a JSON `/status`, routed
//! by axum (405 for other methods, 404 for other paths) and served by hyper with a bound on
//! how long a client may take to send its request head.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
pub use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// A page's body, computed at each request.
pub type Page = Arc<dyn Fn() -> String + Send + Sync>;

/// `/metrics` (OpenMetrics text from [`crate::prom::render`]) and `/status` (JSON).
pub fn router(metrics: Page, status: Page) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(([(CONTENT_TYPE, crate::prom::CONTENT_TYPE)], metrics()))))
        .route("/status", get(move || std::future::ready(([(CONTENT_TYPE, "application/json")], status()))))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_http(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let sock = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of descriptors and the like: back off rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            // Scrapers and curl send one request; closing after it (no keep-alive) and a
            // 5 s limit on the request head mean a silent client cannot hold a connection.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            let _ = conn.await;
        });
    }
}
