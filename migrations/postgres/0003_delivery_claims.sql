-- notify's ledger, second form: atomic claims (owner, run, lease) so several
-- replicas never post one alert twice; the version a message shows (source
-- position and createdAt) so an older record never overwrites a newer one;
-- occurrences, so an alert id seen again after the dedup window is posted
-- anew; and a 'new' status for a claimed row nothing was sent for yet.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('new', 'pending', 'posted', 'failed', 'expired'));
ALTER TABLE deliveries
    ADD COLUMN version_source     TEXT NOT NULL DEFAULT '',
    ADD COLUMN version_offset     BIGINT NOT NULL DEFAULT -1,
    ADD COLUMN version_created_at BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN occurrence         INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN owner              TEXT,
    ADD COLUMN owner_run          TEXT,
    ADD COLUMN lease_until        BIGINT;
DROP INDEX IF EXISTS deliveries_status;
CREATE INDEX deliveries_updated_at ON deliveries (updated_at);
