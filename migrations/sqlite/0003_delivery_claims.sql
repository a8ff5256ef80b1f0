-- notify's ledger, second form: atomic claims (owner, run, lease) so several
-- replicas never post one alert twice; the version a message shows (source
-- position and createdAt) so an older record never overwrites a newer one;
-- occurrences, so an alert id seen again after the dedup window is posted
-- anew; and a 'new' status for a claimed row nothing was sent for yet.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt.
CREATE TABLE deliveries_v3 (
    alert_id           TEXT PRIMARY KEY NOT NULL,
    -- The conversation the message lives in (a DM's D… id, not the user's).
    channel_id         TEXT NOT NULL,
    ts                 TEXT,
    content_hash       TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('new', 'pending', 'posted', 'failed', 'expired')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    error              TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    version_source     TEXT NOT NULL DEFAULT '',
    version_offset     BIGINT NOT NULL DEFAULT -1,
    version_created_at BIGINT NOT NULL DEFAULT 0,
    occurrence         INTEGER NOT NULL DEFAULT 1,
    owner              TEXT,
    owner_run          TEXT,
    lease_until        BIGINT
);
INSERT INTO deliveries_v3 (alert_id, channel_id, ts, content_hash, status, attempts, error, created_at, updated_at)
    SELECT alert_id, channel_id, ts, content_hash, status, attempts, error, created_at, updated_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v3 RENAME TO deliveries;
CREATE INDEX deliveries_updated_at ON deliveries (updated_at);
