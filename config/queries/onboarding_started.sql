-- Customers who started onboarding: their first activation since the last
-- run, keyed by Salesforce account id (the reference `produceOnSchedule`).
-- @checkpoint: the greatest onboarding_started_at already emitted.
SELECT
  sfdc_account_id,
  org_id,
  account_name,
  plan,
  onboarding_started_at
FROM analytics.customer_onboarding
WHERE onboarding_started_at > @checkpoint
  AND sfdc_account_id IS NOT NULL
ORDER BY onboarding_started_at
