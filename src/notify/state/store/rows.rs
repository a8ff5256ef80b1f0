//! `alert_states` rows as [`StateRow`]s, from either driver: sqlx's `Any`
//! rows (by column name) and, for the publisher's hot read, PostgreSQL's
//! own (by place), through the ledger's [`EntryRow`].

use sqlx::any::AnyRow;
use sqlx::Row;

use super::super::{Actor, AlertState, StateKind};
use super::{Place, StateRow};
use crate::notify::ledger::{EntryRow, LedgerError};

pub(super) const COLUMNS: &str = "alert_id, state, actor_id, actor_name, changed_at, snoozed_until, \
     occurrence, version, published_version, shown_version, channel_id, message_ts, pipeline, group_key, base_text, base_blocks";

/// [`COLUMNS`] without the message's content: what a published record
/// needs. The content is most of a row (the blocks are kilobytes).
pub(super) const RECORD_COLUMNS: &str = "alert_id, state, actor_id, actor_name, changed_at, snoozed_until, \
     occurrence, version, published_version, shown_version, channel_id, message_ts, pipeline, group_key";

pub(super) fn row_to_state(row: &AnyRow) -> Result<StateRow, LedgerError> {
    let mut state = row_to_record(row)?;
    state.place.text = row.try_get("base_text")?;
    state.place.blocks = row.try_get("base_blocks")?;
    Ok(state)
}

/// A row read with [`RECORD_COLUMNS`]: its place without content.
pub(super) fn row_to_record(row: &impl EntryRow) -> Result<StateRow, LedgerError> {
    let text = |index: usize, column: &str| row.required_text(index, column);
    let int = |index: usize, column: &str| row.required_int(index, column);
    let alert_id = text(0, "alert_id")?;
    let kind = text(1, "state")?;
    let kind = StateKind::parse(&kind).ok_or_else(|| LedgerError::State {
        alert_id: alert_id.clone(),
        state: kind,
    })?;
    let actor_id = row.text(2, "actor_id")?;
    let actor_name = row.text(3, "actor_name")?;
    Ok(StateRow {
        state: AlertState {
            kind,
            actor: actor_id.map(|id| Actor {
                id,
                name: actor_name,
            }),
            at: int(4, "changed_at")?,
            snoozed_until: row.int(5, "snoozed_until")?,
            occurrence: int(6, "occurrence")?,
        },
        version: int(7, "version")?,
        published_version: int(8, "published_version")?,
        shown_version: int(9, "shown_version")?,
        place: Place {
            channel_id: row.text(10, "channel_id")?,
            message_ts: row.text(11, "message_ts")?,
            pipeline: text(12, "pipeline")?,
            group_key: row.text(13, "group_key")?,
            text: None,
            blocks: None,
        },
        alert_id,
    })
}
