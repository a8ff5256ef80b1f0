//! The state write after a post, carried by the post's own ledger write:
//! most posts are an alert's first, with no state recorded yet, so the
//! state the post leaves is known without reading anything. The ledger
//! writes it with the `posted` entry in one transaction, as the insert
//! [`AlertStates::apply`] would make after reading no row; when a row is
//! there after all (an earlier occurrence, a click first), the insert
//! changes nothing and the post applies its state the usual way.

use std::sync::Arc;

use super::service::{AlertStates, InSlack};
use super::store::{set_statement, StateRow};
use super::{transition, Transition};
use crate::notify::ledger::{LedgerError, Statement};

/// The state an alert's post leaves when it had none.
pub struct FirstState {
    row: StateRow,
}

impl AlertStates {
    /// What [`AlertStates::after_post`] writes for an alert without a state
    /// row, and the insert that writes it (changing nothing if there is a
    /// row); `None` if showing it would change nothing.
    pub fn first_state(alert: InSlack<'_>, now: i64) -> Option<(Statement, FirstState)> {
        let (action, place) = alert.shown();
        let Transition::Change(state) = transition(None, &action, now) else {
            return None;
        };
        let alert_id = &alert.message.alert_id;
        // The post shows the state it leaves.
        let statement = set_statement(alert_id, None, &state, &place, true);
        let row = StateRow {
            alert_id: alert_id.clone(),
            state,
            version: 1,
            published_version: 0,
            shown_version: 1,
            place,
        };
        Some((statement, FirstState { row }))
    }

    /// After notify posted an alert whose `first` state the ledger wrote
    /// with the post (`written`: the rows it inserted, `None` if that
    /// failed): published as any change is, or, when there was a row
    /// already, applied as [`AlertStates::after_post`] does.
    pub async fn after_first_post(
        self: &Arc<Self>,
        alert: InSlack<'_>,
        now: i64,
        first: FirstState,
        written: Option<u64>,
    ) -> Result<(), LedgerError> {
        if written != Some(1) {
            return self.after_post(alert, now).await;
        }
        // A change, published as `after_post` publishes one.
        let (states, alert_id) = (self.clone(), first.row.alert_id);
        tokio::spawn(async move { states.publish(&alert_id).await });
        Ok(())
    }
}
