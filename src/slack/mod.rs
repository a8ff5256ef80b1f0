//! Slack's Web API as notify uses it — post (top-level or in a thread),
//! update, find a message by its alert metadata — with every failure
//! classified as transient (retry), permanent (dead-letter) or an auth
//! failure (stop delivering).
//!
//! Every message notify sends carries metadata naming its alert: an alert's
//! own message (`alertsvc_alert`: alert id, occurrence) and a thread reply
//! about it (`alertsvc_alert_reply`: alert id, occurrence, which reply) have
//! distinct event types, so looking for one after an ambiguous answer never
//! finds the other.
//!
//! [`fake`] is a local Slack Web API for tests and the demo.

pub mod blockkit;
pub mod fake;
pub mod signing;

mod client;
mod error;
mod group;
mod metadata;

pub use client::{is_user_id, Posted, SlackApi, Thread};
pub use error::{ErrorClass, SlackError};
pub use group::{GroupRef, GROUP_METADATA_EVENT};
pub use metadata::{AlertRef, ReplyRef, Tag, ALERT_METADATA_EVENT, REPLY_METADATA_EVENT};
