//! The metrics over HTTP: `GET /metrics` on the run loop's runtime, in
//! Prometheus's text format, or OpenMetrics when the scraper's Accept
//! header asks for it. Each connection is a task of its own, so a client
//! that connects and sends nothing holds up no one else (and is dropped
//! after `HEADER_TIMEOUT`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;

pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client must have sent its request's headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address, before anything else is set up, so that a
/// port already taken is the first error.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for /metrics (--listen)"))?;
    l.set_nonblocking(true)
        .context("cannot make the metrics socket non-blocking")?;
    Ok(l)
}

/// Serves `registry` on `listener` until the task is aborted. Must run
/// inside the tokio runtime.
pub fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot serve the metrics socket")?;
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    log::warn!("metrics: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &registry)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("metrics: connection ended: {e}");
                }
            });
        }
    }))
}

/// The answer to one request.
pub fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: tcpmon serves /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut text = String::with_capacity(8192);
    let (encoded, kind) = match openmetrics {
        true => (
            prometheus_client::encoding::text::encode(&mut text, registry),
            OPENMETRICS_TEXT,
        ),
        false => (
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry),
            PROMETHEUS_TEXT,
        ),
    };
    if encoded.is_err() {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, accept: Option<&str>) -> Response<Full<Bytes>> {
        let mut req = Request::builder().uri(path);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let registry = crate::view::metrics::Metrics::new(&[22]).registry();
        respond(&req.body(()).unwrap(), &registry)
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn formats_by_accept_and_404_elsewhere() {
        let r = get("/metrics", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], PROMETHEUS_TEXT);
        let text = body(r);
        assert!(text.contains(
            "tcpmon_handshakes_total{direction=\"rx\",outcome=\"success\",port=\"22\"} 0"
        ));
        assert!(!text.contains("# EOF"));
        let r = get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert_eq!(r.headers()[CONTENT_TYPE], OPENMETRICS_TEXT);
        assert!(body(r).ends_with("# EOF\n"));
        for path in ["/", "/metrics/", "/other"] {
            assert_eq!(get(path, None).status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}
