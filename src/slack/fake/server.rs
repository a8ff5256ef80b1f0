//! The fake's accept loop. `axum::serve` answers every request it reads;
//! an outage of the `Refuse` kind needs connections dropped unanswered,
//! new and already open ones, so the fake serves each connection itself,
//! and checks for an outage in front of the app there.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::{lock, OutageMode, Shared};

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
        let connection = Connection {
            app: app.clone(),
            state: state.clone(),
            drop_it: CancellationToken::new(),
        };
        let drop_it = connection.drop_it.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(connection));
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

/// The app as one connection serves it. (A per-connection
/// `.layer(Extension(..))` and an axum middleware for the outage rebuilt or
/// cloned every route's service per connection or per request: ~6% of the
/// fake's work.)
#[derive(Clone)]
struct Connection {
    app: Router,
    state: Shared,
    /// Drops this connection.
    drop_it: CancellationToken,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The outage, in front of every method: a `Refuse` outage drops the
/// connection of a request that came on a connection opened before it
/// began; a `ServerError` one answers its status.
impl<B> Service<Request<B>> for Connection
where
    Router: Service<Request<B>, Response = Response, Error = Infallible>,
    <Router as Service<Request<B>>>::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, request: Request<B>) -> Answer {
        let outage = {
            let mut s = lock(&self.state);
            let outage = s.faults.outage;
            if outage.is_some() {
                s.stats.outage_rejections += 1;
            }
            outage
        };
        match outage {
            Some(OutageMode::Refuse) => {
                self.drop_it.cancel();
                // Never answered: the connection goes before this would.
                Box::pin(std::future::pending())
            }
            Some(OutageMode::ServerError(status)) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let answer = (status, "service unavailable (injected outage)").into_response();
                Box::pin(std::future::ready(Ok(answer)))
            }
            None => Box::pin(Service::call(&mut self.app, request)),
        }
    }
}
