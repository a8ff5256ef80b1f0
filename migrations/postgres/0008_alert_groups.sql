-- notify's ledger for grouped alerts (issue 12 item 5): alerts with one
-- group key in one channel within a window share one summary message and
-- reply in its thread (each member's own reply stays in `deliveries`).
-- alert_group_heads: per conversation and key, the group taking members
--   now; replaced atomically once its window has ended, so two replicas
--   never open two groups for one window.
-- alert_groups: one summary message, claimed like an alert (owner, run,
--   lease) so only one replica posts it; 'pending' while a post may be in
--   flight (looked up before posting again). revision counts member changes,
--   shown_revision what the summary in Slack shows, shown_at when it was
--   last edited (edits are paced).
-- alert_group_members: the alerts of a group as its summary lists them.
CREATE TABLE alert_group_heads (
    channel_id   TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    group_id     TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    PRIMARY KEY (channel_id, group_key)
);
CREATE TABLE alert_groups (
    group_id       TEXT PRIMARY KEY,
    channel_id     TEXT NOT NULL,
    group_key      TEXT NOT NULL,
    window_start   BIGINT NOT NULL,
    window_end     BIGINT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('new', 'pending', 'posted', 'failed')),
    ts             TEXT,
    revision       BIGINT NOT NULL DEFAULT 0,
    shown_revision BIGINT NOT NULL DEFAULT 0,
    shown_at       BIGINT,
    error          TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    owner          TEXT,
    owner_run      TEXT,
    lease_until    BIGINT
);
CREATE INDEX alert_groups_dirty ON alert_groups (status, revision, shown_revision);
CREATE INDEX alert_groups_updated_at ON alert_groups (updated_at);
CREATE INDEX alert_groups_ts ON alert_groups (channel_id, ts);
CREATE TABLE alert_group_members (
    group_id   TEXT NOT NULL,
    alert_id   TEXT NOT NULL,
    text       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'firing',
    created_at BIGINT NOT NULL,
    joined_at  BIGINT NOT NULL,
    PRIMARY KEY (group_id, alert_id)
);
CREATE INDEX alert_group_members_alert ON alert_group_members (alert_id);
