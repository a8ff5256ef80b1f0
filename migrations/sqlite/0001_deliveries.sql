-- notify's idempotency ledger: one row per alert id.
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id     TEXT PRIMARY KEY NOT NULL,
    channel_id   TEXT NOT NULL,
    ts           TEXT,
    content_hash TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'failed', 'expired')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status);
