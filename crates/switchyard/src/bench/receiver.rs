//! The webhook receiver (in the bench process) and the bare handler (a child
//! process started as `switchyard bench --bare-server`).

use super::{find, now_ns};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the receiver saw.
pub struct Receiver {
    pub requests: AtomicU64,
    pub events: AtomicU64,
    pub unsigned: AtomicU64,
    /// `messageId":"{prefix}` of the paced phase's events.
    needle: Vec<u8>,
    /// Arrival time of paced event `n` (ns since the bench's start; 0 = not yet).
    pub arrived_ns: Vec<AtomicU64>,
    pub arrived_twice: AtomicU64,
    /// TCP connections accepted (keep-alive reuses them).
    pub connections: AtomicU64,
}

impl Receiver {
    fn record(&self, body: &[u8], at: u64) {
        let events = if body.first() == Some(&b'[') {
            // Batch mode: count the top-level items by their message ids.
            body.windows(12)
                .filter(|w| w == b"\"messageId\":")
                .count()
                .max(1) as u64
        } else {
            1
        };
        self.events.fetch_add(events, Ordering::Relaxed);
        let mut rest = body;
        while let Some(p) = find(rest, &self.needle) {
            rest = &rest[p + self.needle.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if let Some(n) = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            {
                if let Some(slot) = self.arrived_ns.get(n) {
                    if slot
                        .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        self.arrived_twice.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

async fn hook(
    State(r): State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = now_ns();
    r.requests.fetch_add(1, Ordering::Relaxed);
    if !headers.contains_key("x-signature") {
        r.unsigned.fetch_add(1, Ordering::Relaxed);
    }
    r.record(&body, at);
    StatusCode::OK
}

/// `POST /fn`: what destination functions send (unsigned), counted like `/hook`.
async fn function_hook(State(r): State<Arc<Receiver>>, body: Bytes) -> StatusCode {
    let at = now_ns();
    r.requests.fetch_add(1, Ordering::Relaxed);
    r.record(&body, at);
    StatusCode::OK
}

/// Starts the receiver on a free loopback port: `POST /hook` (webhooks, signed)
/// and `POST /fn` (destination functions) answer 200.
pub async fn start_receiver(
    paced_prefix: &str,
    capacity: usize,
) -> anyhow::Result<(SocketAddr, Arc<Receiver>)> {
    let receiver = Arc::new(Receiver {
        requests: AtomicU64::new(0),
        events: AtomicU64::new(0),
        unsigned: AtomicU64::new(0),
        needle: format!("messageId\":\"{paced_prefix}").into_bytes(),
        arrived_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        arrived_twice: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counted = receiver.clone();
    let listener = listener.tap_io(move |_| {
        counted.connections.fetch_add(1, Ordering::Relaxed);
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/fn", post(function_hook))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, receiver))
}

async fn bare(body: Bytes) -> axum::response::Response {
    // Read (above) and drop the body; answer what switchyard answers.
    drop(body);
    success()
}

/// What switchyard answers an accepted call: `200 {"success":true}`.
pub fn success() -> axum::response::Response {
    use axum::response::IntoResponse;
    axum::Json(serde_json::json!({"success": true})).into_response()
}

/// `switchyard bench --bare-server`: an axum handler that answers every POST
/// with 200 `{"success":true}` after reading the body, storing nothing. Prints
/// its address; exits on SIGTERM, Ctrl-C or when its stdin closes (its parent
/// went away).
pub async fn bare_server(durable_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let app = match durable_dir {
        None => Router::new().fallback(bare),
        Some(dir) => Router::new()
            .fallback(super::durable_bare::handle)
            .with_state(super::durable_bare::DurableLog::start(dir)?),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "switchyard-bare: listening on http://{}",
        listener.local_addr()?
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let app = app.layer(axum::extract::DefaultBodyLimit::max(16 << 20));
    // As `serve` does.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // A plain thread, not `spawn_blocking`: the runtime would wait for it on exit.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut sink = [0u8; 256];
            while let Ok(n) = std::io::Read::read(&mut std::io::stdin(), &mut sink) {
                if n == 0 {
                    break;
                }
            }
            let _ = closed_tx.send(());
        })?;
    let stdin_closed = async {
        let _ = closed_rx.await;
    };
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            tokio::select! {
                _ = stdin_closed => {},
                _ = terminate => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        })
        .await?;
    Ok(())
}
