//! The operational HTTP endpoints every long-running stage serves:
//! `/healthz` (the process is alive), `/readyz` (it is doing its job: for
//! enrich, tables are bootstrapped) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    failed: AtomicBool,
    /// Why the stage is not ready, shown by `/readyz` so that an operator
    /// looking at a failing probe sees the cause (and its fix) at once.
    reason: Mutex<Option<String>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn set_not_ready_reason(&self, reason: Option<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.failed.load(Ordering::SeqCst)
    }

    /// The stage hit an error it cannot recover from; liveness fails so the
    /// orchestrator restarts it.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn is_alive(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
    pub registry: Registry,
}

/// The shared routes; stages may merge their own into it.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "failed\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let body = match state.health.not_ready_reason() {
            Some(reason) => format!("not ready: {reason}\n"),
            None => "not ready\n".to_owned(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.registry),
    )
}

/// Binds `addr` and serves `router` until `shutdown` fires. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "HTTP endpoints listening");
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}
