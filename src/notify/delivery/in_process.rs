//! One delivery per alert id at a time inside this process.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Alerts being delivered by this process: one at a time per alert id, so
/// the ledger claim (per instance) only has to arbitrate between replicas.
#[derive(Default)]
pub(super) struct InProcess {
    busy: Mutex<HashSet<String>>,
}

pub(super) struct InProcessGuard<'a> {
    owner: &'a InProcess,
    alert_id: String,
}

impl InProcess {
    pub(super) async fn enter(&self, alert_id: &str) -> InProcessGuard<'_> {
        loop {
            {
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if busy.insert(alert_id.to_owned()) {
                    return InProcessGuard {
                        owner: self,
                        alert_id: alert_id.to_owned(),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for InProcessGuard<'_> {
    fn drop(&mut self) {
        self.owner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.alert_id);
    }
}
