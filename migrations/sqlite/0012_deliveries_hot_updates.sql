-- Every post writes its ledger row twice (the claim, then `posted`), and
-- an index on `updated_at` was rewritten by the second.
-- Retention now finds its rows by `created_at`, which no write changes
-- (`updated_at` is never older than `created_at`, so the rows it deletes
-- are among them).
CREATE INDEX deliveries_created_at ON deliveries (created_at);
DROP INDEX IF EXISTS deliveries_updated_at;
