-- The demo's warehouse (SQLite): the tables the shipped jobs read, in the
-- shape their BigQuery counterparts have. `alertsvc demo` creates it fresh
-- and then writes connector failures from failures.csv into it.
CREATE TABLE connector_status_changes (
    org_id          TEXT,
    env_id          TEXT,
    connector_id    TEXT,
    connector_name  TEXT,
    connector_type  TEXT,
    old_status      TEXT,
    new_status      TEXT,
    failure_reason  TEXT,
    failed_at       TEXT    -- 'YYYY-MM-DD HH:MM:SS', UTC
);

CREATE TABLE customer_onboarding (
    sfdc_account_id        TEXT,
    org_id                 TEXT,
    account_name           TEXT,
    plan                   TEXT,
    onboarding_started_at  TEXT
);

INSERT INTO customer_onboarding VALUES
    ('001A000001', 'org-acme',    'Acme Corp',     'enterprise', datetime('now', '-2 hours')),
    ('001A000002', 'org-globex',  'Globex',        'standard',   datetime('now', '-1 hours')),
    ('001A000003', 'org-initech', 'Initech',       'basic',      datetime('now', '-30 minutes'));
