//! What every caller of Slack in notify shares: the client, the pacer that
//! keeps its calls within Slack's limits, and the health its answers report to.

use std::sync::Arc;

use super::pacing::Pacer;
use super::slack_health::SlackHealth;
use crate::slack::SlackApi;

#[derive(Clone)]
pub struct SlackSide {
    pub api: Arc<SlackApi>,
    pub pacer: Arc<Pacer>,
    pub health: Arc<SlackHealth>,
}
