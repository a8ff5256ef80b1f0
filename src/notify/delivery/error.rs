//! What stops a delivery; the grouper, which delivery drives, stops the same
//! way.

use crate::notify::ledger::LedgerError;
use crate::slack::SlackError;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("Slack rejected the bot token ({0}); delivery stopped")]
    Auth(SlackError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("stopped (shutdown or partition revoked)")]
    Cancelled,
}
