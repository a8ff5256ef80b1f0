//! The shell every long-running stage shares (enrich, notify, produce on a
//! schedule): bind the HTTP endpoints first, hand out a [`StageHandle`],
//! then do the work until shutdown — zero-to-production's
//! `Application::build`. A stage supplies only its [`Work`]; the bind, the
//! handle and the build-then-run path for the CLI are here once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{BindError, Ops, StageHandle};

/// This replica's name: `configured`, else `ALERTSVC_INSTANCE_ID`, else the
/// host name (the pod's, on Kubernetes: stable across restarts, unique
/// among live replicas). `None` when none of them says anything.
pub fn replica_name(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("ALERTSVC_INSTANCE_ID").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// What a stage logs (at `info`) once its endpoints are bound, the address
/// right after it: with `http_addr` on port 0 the log is where operators
/// and the tests that start `alertsvc` as a child learn the port.
pub const SERVING_ON: &str = "serving /healthz, /readyz and /metrics on http://";

/// What a stage does once its endpoints are bound.
pub trait Work: Send + Sized {
    type Error: From<BindError>;

    /// Where the stage serves its endpoints (its `http_addr` setting); an
    /// error when the stage is not configured.
    fn http_addr(&self, settings: &Settings) -> Result<SocketAddr, Self::Error>;

    /// Runs the stage until `shutdown`.
    fn run(
        self,
        bound: Bound<'_>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What a stage's [`Work`] is handed: its configuration and its bound
/// endpoints, which it serves (with its own routes) once it can answer.
pub struct Bound<'a> {
    pub settings: &'a Settings,
    pub config_dir: &'a Path,
    pub ops: Ops,
}

/// A stage, bound but not yet working: its endpoints' address, health and
/// metrics registry are known before [`Stage::run_until_stopped`] starts
/// the work. Tests configure port 0 and read the bound address.
pub struct Stage<W> {
    work: W,
    settings: Settings,
    config_dir: PathBuf,
    ops: Ops,
}

impl<W: Work> Stage<W> {
    /// Binds the stage's endpoints (port 0 picks one); a taken port fails
    /// here, before any work starts.
    pub async fn build_with(
        work: W,
        settings: &Settings,
        config_dir: &Path,
    ) -> Result<Stage<W>, W::Error> {
        let ops = Ops::bind(work.http_addr(settings)?).await?;
        let addr = ops.handle().addr;
        tracing::info!(%addr, "{SERVING_ON}{addr}");
        Ok(Stage {
            work,
            settings: settings.clone(),
            config_dir: config_dir.to_owned(),
            ops,
        })
    }

    pub fn handle(&self) -> StageHandle {
        self.ops.handle().clone()
    }

    /// Runs the stage until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), W::Error> {
        let Stage {
            work,
            settings,
            config_dir,
            ops,
        } = self;
        let bound = Bound {
            settings: &settings,
            config_dir: &config_dir,
            ops,
        };
        work.run(bound, shutdown).await
    }
}

impl<W: Work + Default> Stage<W> {
    /// [`Stage::build_with`] for a stage whose work needs nothing but the
    /// settings.
    pub async fn build(settings: &Settings, config_dir: &Path) -> Result<Stage<W>, W::Error> {
        Stage::build_with(W::default(), settings, config_dir).await
    }

    /// Builds, then runs until `shutdown`: the CLI's path.
    pub async fn run(
        settings: &Settings,
        config_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<(), W::Error> {
        Stage::<W>::build(settings, config_dir)
            .await?
            .run_until_stopped(shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    /// Reports the address its endpoints were bound to.
    struct Probe {
        addr: SocketAddr,
        seen: tokio::sync::oneshot::Sender<SocketAddr>,
    }

    #[derive(Debug, PartialEq)]
    enum ProbeError {
        CannotBind(SocketAddr),
    }

    impl From<BindError> for ProbeError {
        fn from(e: BindError) -> ProbeError {
            ProbeError::CannotBind(e.addr)
        }
    }

    impl Work for Probe {
        type Error = ProbeError;

        fn http_addr(&self, _: &Settings) -> Result<SocketAddr, ProbeError> {
            Ok(self.addr)
        }

        async fn run(self, bound: Bound<'_>, _: CancellationToken) -> Result<(), ProbeError> {
            let _ = self.seen.send(bound.ops.handle().addr);
            Ok(())
        }
    }

    fn settings() -> (Settings, PathBuf) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load(&Sources::files_only(dir.clone())).unwrap();
        (settings, dir)
    }

    fn probe(addr: SocketAddr) -> (Probe, tokio::sync::oneshot::Receiver<SocketAddr>) {
        let (seen, rx) = tokio::sync::oneshot::channel();
        (Probe { addr, seen }, rx)
    }

    #[tokio::test]
    async fn the_handle_shows_the_address_the_work_is_given() {
        let (settings, dir) = settings();
        let (work, seen) = probe("127.0.0.1:0".parse().unwrap());
        let stage = Stage::build_with(work, &settings, &dir).await.unwrap();
        let bound = stage.handle().addr;
        assert_ne!(bound.port(), 0);
        stage
            .run_until_stopped(CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(seen.await.unwrap(), bound);
    }

    #[tokio::test]
    async fn a_taken_port_fails_the_build_with_the_stages_error() {
        let (settings, dir) = settings();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (work, _) = probe(addr);
        let error = Stage::build_with(work, &settings, &dir).await.err();
        assert_eq!(error, Some(ProbeError::CannotBind(addr)));
    }
}
