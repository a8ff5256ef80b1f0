//! Logs are JSON lines when `log.format = "json"`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{config_dir, kill_child, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    let env = TestEnv::new("").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(config_dir())
        .arg("--config")
        .arg(&env.overlay)
        .arg("enrich")
        .env("ALERTSVC__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("enrich is ready"))
            .collect()
    })
    .await
    .unwrap();
    kill_child(&mut child);
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("HTTP endpoints listening")));
}
