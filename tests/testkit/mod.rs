//! Fixtures shared by the integration tests (`tests/it/common` includes
//! this module) and the benchmarks (`benches/*.rs` include it with
//! `#[path]`): the shipped configuration, overlays, ports, waiting for a
//! condition, stopping child processes, the mock broker and record
//! builders. It holds only what both sides need, so that a bench measures
//! the same records and setup the tests prove correct.

#![allow(dead_code)]

pub mod bigquery;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use alertsvc::config::{Settings, Sources};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::{json, Value};

/// The shipped `config/` directory.
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The shipped configuration with `extra` (a TOML file) merged over it,
/// without environment variables.
pub fn load_settings(extra: Option<PathBuf>) -> Settings {
    Settings::load(&Sources {
        extra_file: extra,
        ..Sources::files_only(config_dir())
    })
    .expect("configuration loads")
}

/// Writes `toml` to `dir/name` and returns the path, for `--config` or
/// [`load_settings`].
pub fn write_overlay(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A port that was free a moment ago. The port is released before it is
/// used, so another process may take it first: use it only for programs
/// that must be told their port up front (chromedriver, the BigQuery
/// emulator) or for an address where nothing listens. alertsvc binds port
/// 0 and reports the address it got: in-process through
/// `StageHandle::addr`, as a child in its log ([`address_after`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The address a child wrote right after `marker` into the file `path`
/// (its log or its stdout), looking only past byte `from` (the file's
/// length when the child started: a restarted child appends to the same
/// log). Waits up to 30 s while `child` runs; fails with what the file
/// holds if the child exits first. Blocking: a child's start takes
/// milliseconds and needs nothing from the caller's runtime.
pub fn address_after(
    path: &Path,
    from: u64,
    marker: &str,
    child: &mut Child,
) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        if let Some(at) = text.find(marker) {
            let rest = &text[at + marker.len()..];
            let is_addr = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']');
            // Only a whole address: the line may still be being written.
            if let Some(end) = rest.find(|c: char| !is_addr(c)) {
                return rest[..end]
                    .parse()
                    .unwrap_or_else(|e| panic!("{}: `{}`: {e}", path.display(), &rest[..end]));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) before writing `{marker}`:\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{marker}` in {} after 30 s:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The length of the file at `path`, 0 when there is none yet: where a
/// child appending to it starts ([`address_after`]).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Polls `condition` every 50 ms until it yields a value, which is
/// returned; after `timeout`, fails naming `what` was awaited.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting after {timeout:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `url`: (status, body), or `None` if nothing answered.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Waits until `http://addr/readyz` answers 200.
pub async fn wait_ready_at(addr: std::net::SocketAddr, timeout: Duration) {
    let url = format!("http://{addr}/readyz");
    eventually(timeout, &format!("{addr} ready"), || async {
        matches!(http_get(&url).await, Some((200, _))).then_some(())
    })
    .await
}

/// Stops a child process as an orchestrator does: SIGTERM, up to `grace`
/// for it to exit, then SIGKILL. Returns how it exited (a signal, not a
/// code, if it had to be killed).
pub async fn stop_child(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Some(status) = child.try_wait().expect("child status") {
        return status;
    }
    // std offers only SIGKILL; `kill` saves a libc dependency.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(status.success(), "kill -TERM {}: {status}", child.id());
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_child(child)
}

/// SIGKILL (a crashed or evicted pod) and reap; returns the exit status.
pub fn kill_child(child: &mut Child) -> ExitStatus {
    // Killing a child that already exited is not an error worth a panic:
    // `wait` below reports how it ended either way.
    let _ = child.kill();
    child.wait().expect("reap child")
}

/// librdkafka's in-process mock cluster (one broker) with `topics`
/// (name, partitions) created.
pub fn mock_cluster(topics: &[(&str, i32)]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for (name, partitions) in topics {
        cluster
            .create_topic(name, *partitions, 1)
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    }
    cluster
}

/// A `NotificationsPipelineEvent` for a connector status change to `Failed`.
pub fn connector_event(id: &str, env: &str, connector: &str, old_status: &str) -> Value {
    connector_status_event(id, env, connector, old_status, "Failed")
}

/// A `NotificationsPipelineEvent` for a connector status change.
pub fn connector_status_event(
    id: &str,
    env: &str,
    connector: &str,
    old_status: &str,
    new_status: &str,
) -> Value {
    let data = json!({
        "env_id": env,
        "connector_id": connector,
        "connector_name": format!("{connector}-name"),
        "connector_type": "PostgresSink",
        "failure_reason": format!("bad credentials for {connector}"),
        "labels": {"connector_old_status": old_status, "connector_new_status": new_status},
    });
    json!({"eventId": id, "eventType": "connector-failure", "source": "tests",
           "time": 1_700_000_000_000i64, "data": data.to_string()})
}

/// A `csdr-assignment` table record: the CSDR (by email) of an org.
pub fn assignment(org: &str, email: &str, org_name: &str) -> Value {
    json!({"org_id": org, "org_name": org_name, "csdr_name": format!("CSDR of {org_name}"),
           "csdr_email": email, "updated_at": 1})
}

/// A `slack-users` table record: the Slack user of an email.
pub fn slack_user(email: &str, user_id: &str) -> Value {
    json!({"email": email, "slack_user_id": user_id, "display_name": user_id})
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a
/// failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test unwinds.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// A benchmark's overlay in `dir`: warnings only, the broker at
/// `bootstrap`, then `rest` (TOML).
pub fn bench_overlay(dir: &Path, bootstrap: &str, rest: &str) -> PathBuf {
    write_overlay(
        dir,
        "bench.toml",
        &format!("[log]\nlevel = \"warn\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n{rest}"),
    )
}

/// A benchmark binary's setup: the TLS provider the `alertsvc` binary
/// installs, and its arguments without the flags cargo passes (`--bench`).
pub fn bench_init() -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}
