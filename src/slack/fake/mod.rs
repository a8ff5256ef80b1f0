//! A local stand-in for Slack's Web API, faithful where notify depends on
//! it, so that tests, the demo and the benchmarks exercise notify against
//! Slack's behaviour rather than against our assumptions about it:
//! bearer-token auth (`not_authed`, `invalid_auth`, `token_revoked`),
//! known channels (`channel_not_found`, `is_archived`, `not_in_channel`),
//! DMs as Slack does them (a post to a user id lands in a `D…`
//! conversation, and only the `D…` id works for updates and history),
//! Block Kit and length checks (`invalid_blocks`, `msg_too_long`), a
//! per-channel rate limit answered with HTTP 429 and `Retry-After`,
//! `chat.update` (and its tier limit), `conversations.history` with message
//! metadata (and its tier limit), `conversations.open`, and threads as Slack keeps them: a
//! `thread_ts` must name a top-level message of that conversation
//! (`thread_not_found`), replies are listed by `conversations.replies` and
//! not by `conversations.history` unless sent with `reply_broadcast`, and a
//! parent carries `reply_count` and `latest_reply`.
//!
//! For chaos tests it injects the faults that break exactly-once delivery
//! if notify mishandles them — outages, posts stored but answered with an
//! error or too late, surprise 429s — deterministically from a seed (see
//! [`faults`]), and records what a test needs to check the outcome: posts
//! per alert id and every text each message showed.

mod api;
mod faults;
mod server;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use faults::OutageMode;
use faults::{Faults, TierLimit};

#[derive(Debug, Clone)]
pub struct FakeSlackConfig {
    pub token: String,
    /// Conversation ids (`C…`, `G…`) the app can post to.
    pub channels: Vec<String>,
    /// User ids (`U…`, `W…`) that exist; each has a DM conversation with
    /// the app whose id is [`dm_channel`] of the user id.
    pub users: Vec<String>,
    pub archived: Vec<String>,
    pub not_in_channel: Vec<String>,
    /// Posts per second per channel before 429s; `None` = no limit.
    pub per_channel_per_second: Option<f64>,
    pub burst: u32,
    /// `conversations.history` calls per minute before 429s (Slack's tier
    /// limit); `None` = no limit.
    pub history_per_minute: Option<u32>,
    /// `chat.update` calls per minute before 429s (Tier 3, workspace-wide:
    /// Slack documents "50+"); `None` = no limit.
    pub updates_per_minute: Option<u32>,
    /// The "minute" of the tier limits: tests shorten it so a `Retry-After`
    /// is waited out in seconds.
    pub tier_window: Duration,
    /// Seeds the injected faults' random choices.
    pub seed: u64,
}

impl Default for FakeSlackConfig {
    fn default() -> Self {
        FakeSlackConfig {
            token: "xoxb-fake-token".into(),
            channels: Vec::new(),
            users: Vec::new(),
            archived: Vec::new(),
            not_in_channel: Vec::new(),
            per_channel_per_second: Some(1.0),
            burst: 1,
            history_per_minute: None,
            updates_per_minute: None,
            tier_window: Duration::from_secs(60),
            seed: 0,
        }
    }
}

/// The id of the app's DM conversation with `user`: stable, so tests can
/// name it before anything is posted (`U0ADA` → `D0ADA`).
pub fn dm_channel(user: &str) -> String {
    let mut rest = user.chars();
    rest.next();
    format!("D{}", rest.as_str())
}

/// A message as the fake stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeMessage {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Value,
    pub metadata: Option<Value>,
    pub edits: u32,
    /// The text after the post and after every update, oldest first: what
    /// a reader of the channel saw, to check it never went backwards.
    pub revisions: Vec<String>,
    /// A reply's parent (the thread); `None` for a top-level message.
    pub thread_ts: Option<String>,
    /// A reply also shown in the channel (`reply_broadcast`).
    pub reply_broadcast: bool,
}

impl FakeMessage {
    /// The alert whose own message this is (metadata event
    /// `alertsvc_alert`); `None` for a reply about an alert.
    pub fn alert_id(&self) -> Option<&str> {
        let meta = self.metadata.as_ref()?;
        (meta["event_type"] == crate::slack::ALERT_METADATA_EVENT)
            .then(|| meta["event_payload"]["alert_id"].as_str())
            .flatten()
    }

    /// The alert a message is about: its own message or a reply.
    pub fn about_alert(&self) -> Option<&str> {
        self.metadata.as_ref()?["event_payload"]["alert_id"].as_str()
    }

    /// Which reply about an alert this is (`resolved`, `update:…`).
    pub fn reply_key(&self) -> Option<&str> {
        let meta = self.metadata.as_ref()?;
        (meta["event_type"] == crate::slack::REPLY_METADATA_EVENT)
            .then(|| meta["event_payload"]["reply"].as_str())
            .flatten()
    }

    /// Whether the message shows in the channel (`conversations.history`):
    /// top-level, or a broadcast reply.
    pub fn in_channel(&self) -> bool {
        self.thread_ts.is_none() || self.reply_broadcast
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FakeStats {
    /// Stored posts, ambiguous ones and replies included.
    pub posts: usize,
    /// Stored posts into a thread.
    pub replies: usize,
    /// `conversations.replies` calls past auth.
    pub replies_calls: usize,
    pub updates: usize,
    /// `conversations.history` calls past auth, rate-limited ones included.
    pub history_calls: usize,
    /// 429 answers: the per-channel limit, injected ones and the history
    /// and update tier limits.
    pub rate_limited: usize,
    /// Answers from [`FakeSlack::fail_next`].
    pub server_errors: usize,
    /// Posts and updates refused with a Slack error code.
    pub rejected: usize,
    /// `conversations.open` calls past auth.
    pub opens: usize,
    /// Connections and calls refused or failed by an outage.
    pub outage_rejections: usize,
    /// Posts stored but answered with a 500 or too late.
    pub ambiguous: usize,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A thread's replies as Slack sums them up on its parent.
struct Thread {
    replies: usize,
    latest: String,
}

struct SlackState {
    config: FakeSlackConfig,
    /// `config.channels`, for a lookup per call.
    channels: HashSet<String>,
    messages: Vec<FakeMessage>,
    /// Where each (channel, ts) is first in `messages`: lookups by ts
    /// without a scan of every message stored.
    positions: HashMap<(String, String), usize>,
    /// Each thread's replies (by channel and parent ts): how many and the
    /// latest, for the parent's `reply_count` and `latest_reply`.
    threads: HashMap<(String, String), Thread>,
    buckets: HashMap<String, Bucket>,
    stats: FakeStats,
    next_ts: u64,
    fail_next: VecDeque<u16>,
    latency: Duration,
    revoked: bool,
    faults: Faults,
    /// DMs that were opened or posted to (`already_open` in answers).
    open_dms: BTreeSet<String>,
    /// Posts of each alert's own message (occurrences, not replies about
    /// it), as they were posted.
    posts_by_alert: BTreeMap<String, usize>,
    /// Lets the demo page show messages newest first as they arrive.
    listeners: Vec<tokio::sync::mpsc::UnboundedSender<FakeMessage>>,
}

impl SlackState {
    /// The user whose DM `channel` is, if it is a known user's DM.
    fn dm_user(&self, channel: &str) -> Option<&str> {
        if !channel.starts_with('D') {
            return None;
        }
        self.config
            .users
            .iter()
            .find(|u| dm_channel(u) == channel)
            .map(String::as_str)
    }

    /// Stores `message` last, indexed by its ts and its thread.
    fn store(&mut self, message: FakeMessage) {
        self.positions
            .entry((message.channel.clone(), message.ts.clone()))
            .or_insert(self.messages.len());
        if let Some(parent) = &message.thread_ts {
            let thread = self
                .threads
                .entry((message.channel.clone(), parent.clone()))
                .or_insert(Thread {
                    replies: 0,
                    latest: String::new(),
                });
            thread.replies += 1;
            thread.latest.clone_from(&message.ts);
        }
        self.messages.push(message);
    }

    fn count_post(&mut self, message: &FakeMessage) {
        if let Some(alert) = message.alert_id() {
            *self.posts_by_alert.entry(alert.to_owned()).or_insert(0) += 1;
        }
    }
}

type Shared = Arc<Mutex<SlackState>>;

/// A poisoned lock only means a handler panicked; the state is still the
/// best account of what was stored.
fn lock(state: &Shared) -> MutexGuard<'_, SlackState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct FakeSlack {
    /// Base URL of the Web API, e.g. `http://127.0.0.1:PORT/api`.
    pub url: String,
    pub addr: SocketAddr,
    state: Shared,
}

impl FakeSlack {
    pub async fn start(config: FakeSlackConfig) -> std::io::Result<FakeSlack> {
        Self::start_on(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            config,
        )
        .await
    }

    pub async fn start_on(addr: SocketAddr, config: FakeSlackConfig) -> std::io::Result<FakeSlack> {
        let state = Arc::new(Mutex::new(SlackState {
            faults: Faults::new(
                config.seed,
                TierLimit::new(config.history_per_minute, config.tier_window),
                TierLimit::new(config.updates_per_minute, config.tier_window),
            ),
            channels: config.channels.iter().cloned().collect(),
            config,
            messages: Vec::new(),
            positions: HashMap::new(),
            threads: HashMap::new(),
            buckets: HashMap::new(),
            stats: FakeStats::default(),
            next_ts: 1,
            fail_next: VecDeque::new(),
            latency: Duration::ZERO,
            revoked: false,
            open_dms: BTreeSet::new(),
            posts_by_alert: BTreeMap::new(),
            listeners: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = api::router(state.clone());
        tokio::spawn(server::serve(listener, app, state.clone()));
        Ok(FakeSlack {
            url: format!("http://{addr}/api"),
            addr,
            state,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlackState> {
        lock(&self.state)
    }

    pub fn messages(&self) -> Vec<FakeMessage> {
        self.lock().messages.clone()
    }

    pub fn stats(&self) -> FakeStats {
        self.lock().stats
    }

    /// How many posts of its own message (metadata `alertsvc_alert`, not a
    /// reply about it) each alert id had, counted when posted (ambiguous
    /// and inserted ones included): more than one per occurrence means the
    /// alert was delivered twice.
    pub fn posts_by_alert(&self) -> BTreeMap<String, usize> {
        self.lock().posts_by_alert.clone()
    }

    /// The next `count` Web API calls answer HTTP `status`.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.lock()
            .fail_next
            .extend(std::iter::repeat_n(status, count));
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn revoke_token(&self) {
        self.lock().revoked = true;
    }

    pub fn add_channel(&self, channel: &str) {
        let mut s = self.lock();
        s.config.channels.push(channel.to_owned());
        s.channels.insert(channel.to_owned());
    }

    /// Archives a channel: posts and edits to it answer `is_archived`
    /// from now on, its messages stay.
    pub fn archive_channel(&self, channel: &str) {
        self.lock().config.archived.push(channel.to_owned());
    }

    pub fn add_user(&self, user: &str) {
        self.lock().config.users.push(user.to_owned());
    }

    /// The user whose DM `channel` is (`D0ADA` → `U0ADA`), for showing
    /// a DM by its recipient.
    pub fn dm_user(&self, channel: &str) -> Option<String> {
        self.lock().dm_user(channel).map(str::to_owned)
    }

    /// Starts (`Some`) or ends (`None`) an outage. Nothing is stored while
    /// it lasts. A request already being handled when it begins is still
    /// answered; a connection opened before it is dropped at its next
    /// request.
    pub fn set_outage(&self, mode: Option<OutageMode>) {
        self.lock().faults.outage = mode;
    }

    /// With probability `rate`, a `chat.postMessage` that succeeds is
    /// stored but answered ambiguously: alternately HTTP 500 (first) and
    /// the success answer only after `late_answer`. `rate` 0 turns it off.
    pub fn set_ambiguous(&self, rate: f64, late_answer: Duration) {
        self.lock().faults.set_ambiguous(rate, late_answer);
    }

    /// With probability `rate`, a `chat.postMessage` answers 429 with
    /// `Retry-After: retry_after_secs` and stores nothing. `rate` 0 turns
    /// it off.
    pub fn set_rate_limit_injection(&self, rate: f64, retry_after_secs: u64) {
        self.lock()
            .faults
            .set_rate_limit_injection(rate, retry_after_secs);
    }

    /// Changes [`FakeSlackConfig::updates_per_minute`], counted over
    /// `window` instead of a minute.
    pub fn set_update_limit(&self, limit: Option<u32>, window: Duration) {
        let mut s = self.lock();
        s.config.updates_per_minute = limit;
        s.faults.updates = TierLimit::new(limit, window);
    }

    /// Changes [`FakeSlackConfig::history_per_minute`].
    pub fn set_history_per_minute(&self, limit: Option<u32>) {
        let mut s = self.lock();
        s.config.history_per_minute = limit;
        s.faults.history.calls = limit;
    }

    /// Every message stored from now on, as it is stored or updated.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<FakeMessage> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().listeners.push(tx);
        rx
    }

    /// Stores a message as if posted earlier (for history tests); it
    /// counts in [`FakeSlack::posts_by_alert`]. Empty `revisions` become
    /// the message's text.
    pub fn insert_message(&self, mut message: FakeMessage) {
        if message.revisions.is_empty() {
            message.revisions.push(message.text.clone());
        }
        let mut s = self.lock();
        s.count_post(&message);
        s.store(message);
    }
}
