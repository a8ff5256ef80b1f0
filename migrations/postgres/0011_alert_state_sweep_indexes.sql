-- The background sweeps read only the rows they act on. Before this, the
-- publish sweep's `published_version < version` and the snooze sweep's
-- `state = 'snoozed'` had no index that could answer them, so every sweep
-- (every 5 s, per replica) read the whole table, however many states the
-- retention keeps; and the index on (published_version, version), which no
-- query could use, took an entry on every insert and every publish mark.
DROP INDEX IF EXISTS alert_states_unpublished;
-- Partial, like alert_states_unshown: a state is in it from its change
-- until its record is on the topic, so a publish mark takes no entry here.
CREATE INDEX alert_states_unpublished ON alert_states (changed_at) WHERE published_version < version;
CREATE INDEX alert_states_snoozed ON alert_states (snoozed_until) WHERE state = 'snoozed';
