-- notify's ledger: an alert's state as people set it in Slack (issue 12).
-- state: firing | acknowledged | snoozed | resolved; actor_*: the Slack user
--   who changed it (NULL: notify itself, e.g. an upstream resolve).
-- occurrence: the alert occurrence the state belongs to (a new one fires).
-- version: bumped by every change; changes are compare-and-set on it, so two
--   replicas or a double click make one change.
-- published_version: the last version written to the alert-state topic; a
--   row behind is published again (at least once).
-- group_key: the alert's group key when its pipeline groups alerts.
-- channel_id / message_ts / pipeline / base_text / base_blocks: the message
--   the state is shown on and its content as rendered (undecorated), so a
--   click re-renders the content with the new state.
CREATE TABLE alert_states (
    alert_id          TEXT PRIMARY KEY,
    state             TEXT NOT NULL
        CHECK (state IN ('firing', 'acknowledged', 'snoozed', 'resolved')),
    actor_id          TEXT,
    actor_name        TEXT,
    changed_at        BIGINT NOT NULL,
    snoozed_until     BIGINT,
    occurrence        BIGINT NOT NULL DEFAULT 1,
    version           BIGINT NOT NULL DEFAULT 1,
    published_version BIGINT NOT NULL DEFAULT 0,
    channel_id        TEXT,
    message_ts        TEXT,
    pipeline          TEXT NOT NULL DEFAULT '',
    group_key         TEXT,
    base_text         TEXT,
    base_blocks       TEXT
);
CREATE INDEX alert_states_unpublished ON alert_states (published_version, version);
CREATE INDEX alert_states_changed_at ON alert_states (changed_at);
