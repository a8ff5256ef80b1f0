-- SQLite twin of queries/onboarding_started.sql for the demo's warehouse.
SELECT sfdc_account_id, org_id, account_name, plan, onboarding_started_at
FROM customer_onboarding
WHERE onboarding_started_at > @checkpoint
  AND sfdc_account_id IS NOT NULL
ORDER BY onboarding_started_at
