//! The fake's accept loop. `axum::serve` answers every request it reads;
//! an outage of the `Refuse` kind needs connections dropped unanswered,
//! new and already open ones, so the fake serves each connection itself.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{lock, OutageMode, Shared};

/// Drops the connection a request came on.
#[derive(Clone)]
struct Connection(CancellationToken);

/// Serves `app` until the runtime ends.
pub(super) async fn serve(listener: TcpListener, app: Router, state: Shared) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors and the like: give the system a moment.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if refusing(&state) {
            // A reset rather than a clean close: the client cannot take
            // the closed connection for an answer.
            let _ = stream.set_zero_linger();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let drop_it = CancellationToken::new();
        let app = app.clone().layer(Extension(Connection(drop_it.clone())));
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            // Dropping the connection closes the socket, whatever it was
            // doing.
            tokio::select! {
                () = drop_it.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Whether a `Refuse` outage is on; counts the refusal if so.
fn refusing(state: &Shared) -> bool {
    let mut s = lock(state);
    let refusing = s.faults.outage == Some(OutageMode::Refuse);
    if refusing {
        s.stats.outage_rejections += 1;
    }
    refusing
}

/// The outage, in front of every method: a `Refuse` outage drops the
/// connection of a request that came on a connection opened before it
/// began; a `ServerError` one answers its status.
pub(super) async fn outage(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if refusing(&state) {
        if let Some(Connection(drop_it)) = request.extensions().get::<Connection>() {
            drop_it.cancel();
        }
        // Never answered: the connection goes before this would.
        return std::future::pending().await;
    }
    let failing = {
        let mut s = lock(&state);
        let failing = match s.faults.outage {
            Some(OutageMode::ServerError(status)) => Some(status),
            _ => None,
        };
        if failing.is_some() {
            s.stats.outage_rejections += 1;
        }
        failing
    };
    match failing {
        Some(status) => {
            let status = axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            (status, "service unavailable (injected outage)").into_response()
        }
        None => next.run(request).await,
    }
}
