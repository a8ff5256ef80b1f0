-- shown_version: the last version of the state shown on the alert's message
--   in Slack (or given up on: no message known, or Slack refused the edit
--   for good). A row behind is shown again by notify's background sweep: a
--   click whose edit Slack rate-limited or could not take during an outage,
--   or that a crash interrupted, still reaches the message.
ALTER TABLE alert_states ADD COLUMN shown_version INTEGER NOT NULL DEFAULT 0;
-- Rows from before this column were shown (or given up on) back then.
UPDATE alert_states SET shown_version = version;
-- Partial: the sweep reads only the rows behind, oldest change first.
CREATE INDEX alert_states_unshown ON alert_states (changed_at) WHERE shown_version < version;
