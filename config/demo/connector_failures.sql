-- SQLite twin of queries/connector_failures.sql for the demo's warehouse.
SELECT org_id, env_id, connector_id, connector_name, connector_type,
       old_status, new_status, failure_reason, failed_at
FROM connector_status_changes
WHERE (new_status = 'Failed' OR (old_status = 'Failed' AND new_status = 'Running'))
  AND failed_at > @checkpoint
ORDER BY failed_at
