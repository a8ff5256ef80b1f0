//! enrich is ready when every table is bootstrapped and no reader is waiting
//! for the Schema Registry. The readers (the stream processor, each table
//! loader, the output topics finding their schema ids) report registry
//! trouble here; while any of them waits, `/readyz` answers 503 with the
//! first waiting reader's error and `alertsvc_enrich_registry_unavailable`
//! is 1. The outage is logged once when it starts and once when it ends,
//! however many readers and retries it spans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use crate::http::Health;

pub struct Readiness {
    health: Arc<Health>,
    registry_unavailable: IntGauge,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bootstrapped: bool,
    stopping: bool,
    /// Readers waiting for the registry, with their last error.
    waiting: BTreeMap<String, String>,
}

impl State {
    fn ready(&self) -> bool {
        self.bootstrapped && !self.stopping && self.waiting.is_empty()
    }
}

impl Readiness {
    pub fn new(health: Arc<Health>, registry_unavailable: IntGauge) -> Self {
        registry_unavailable.set(0);
        Readiness {
            health,
            registry_unavailable,
            state: Mutex::default(),
        }
    }

    /// Every table reached its start-time end.
    pub fn bootstrapped(&self) {
        self.update(|state| state.bootstrapped = true);
    }

    /// Shutting down: never ready again.
    pub fn stopping(&self) {
        self.update(|state| state.stopping = true);
    }

    /// `reader` cannot go on until the registry answers.
    pub fn registry_unavailable(&self, reader: &str, error: &dyn std::fmt::Display) {
        self.update(|state| {
            if state.waiting.is_empty() {
                tracing::warn!(reader, %error, "Schema Registry unavailable; records wait for it (not ready)");
            }
            if state
                .waiting
                .insert(reader.to_owned(), error.to_string())
                .is_none()
            {
                tracing::debug!(reader, "waiting for the Schema Registry");
            }
        });
    }

    /// `reader` got through to the registry again (or no longer needs it).
    pub fn registry_available(&self, reader: &str) {
        self.update(|state| {
            if state.waiting.remove(reader).is_some() && state.waiting.is_empty() {
                tracing::info!(
                    reader,
                    "Schema Registry available again; processing resumes"
                );
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        // Held across the health update so concurrent reports cannot leave
        // `/readyz` with a stale answer.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.registry_unavailable
            .set(i64::from(!state.waiting.is_empty()));
        self.health.set_not_ready_reason(
            state
                .waiting
                .iter()
                .next()
                .map(|(reader, error)| format!("{reader} waits for the Schema Registry: {error}")),
        );
        self.health.set_ready(state.ready());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_bootstrapped_and_no_reader_waits() {
        let health = Arc::new(Health::default());
        let gauge = IntGauge::new("g", "g").unwrap();
        let readiness = Readiness::new(health.clone(), gauge.clone());
        readiness.registry_unavailable("table a", &"503");
        assert!(!health.is_ready());
        readiness.bootstrapped();
        assert!(!health.is_ready(), "a table still waits for the registry");
        readiness.registry_unavailable("stream", &"503");
        readiness.registry_available("table a");
        assert!(!health.is_ready());
        assert_eq!(gauge.get(), 1);
        assert_eq!(
            health.not_ready_reason().as_deref(),
            Some("stream waits for the Schema Registry: 503")
        );
        readiness.registry_available("stream");
        assert!(health.is_ready());
        assert_eq!(gauge.get(), 0);
        assert_eq!(health.not_ready_reason(), None);
        readiness.registry_available("stream");
        assert!(health.is_ready(), "reporting twice changes nothing");
        readiness.stopping();
        assert!(!health.is_ready());
        readiness.registry_available("stream");
        assert!(!health.is_ready());
    }
}
