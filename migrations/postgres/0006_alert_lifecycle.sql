-- notify's ledger, third form: an alert's lifecycle and its thread.
-- alert_status: what the alert's message shows, 'firing' or 'resolved' (for
--   an alert never shown: what its last record said).
-- thread_ts: the thread this occurrence's message was posted into (an
--   occurrence recurring under an earlier one); NULL: the message is
--   top-level and its own ts is the thread.
-- reply_key / reply_ts: the last thread reply made for this occurrence
--   ('resolved', or 'update:<content>'), so a replay never replies twice.
-- reply_pending: a reply that may be in flight: looked for in the thread
--   before it is sent again.
ALTER TABLE deliveries
    ADD COLUMN alert_status  TEXT NOT NULL DEFAULT 'firing',
    ADD COLUMN thread_ts     TEXT,
    ADD COLUMN reply_key     TEXT,
    ADD COLUMN reply_ts      TEXT,
    ADD COLUMN reply_pending TEXT;
