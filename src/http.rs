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

/// What a running stage shows of itself: the address its endpoints are
/// bound to (the real port when configured with port 0), its health and
/// its metrics registry. Tests and the demo read these directly instead of
/// guessing a free port or parsing `/metrics` text.
#[derive(Clone)]
pub struct StageHandle {
    pub addr: SocketAddr,
    pub health: Arc<Health>,
    pub registry: Registry,
}

impl StageHandle {
    /// The sum of a counter or gauge over all its label values (0 when the
    /// metric has not been registered or observed yet).
    pub fn metric_sum(&self, name: &str) -> f64 {
        crate::metrics::sum(&self.registry, name)
    }
}

/// A stage's operational endpoints, bound before the stage starts its work
/// (as zero-to-production's `Application::build` does): a port that is
/// taken fails the build, and the bound address is known at once.
pub struct Ops {
    listener: TcpListener,
    handle: StageHandle,
}

/// A stage's endpoints could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl Ops {
    pub async fn bind(addr: SocketAddr) -> Result<Ops, BindError> {
        let error = |source| BindError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(error)?;
        let handle = StageHandle {
            addr: listener.local_addr().map_err(error)?,
            health: Arc::new(Health::default()),
            registry: Registry::new(),
        };
        Ok(Ops { listener, handle })
    }

    pub fn handle(&self) -> &StageHandle {
        &self.handle
    }

    /// Serves the shared routes plus the stage's own `extra` routes until
    /// `shutdown` fires.
    pub fn serve(self, extra: Router, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let router = ops_router(AppState {
            health: self.handle.health.clone(),
            registry: self.handle.registry.clone(),
        })
        .merge(extra);
        serve_on(self.listener, router, shutdown)
    }
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
    Ok((bound, serve_on(listener, router, shutdown)))
}

fn serve_on(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(%bound, "HTTP endpoints listening");
    }
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}
