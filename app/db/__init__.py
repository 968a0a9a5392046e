"""Postgres access: the runtime pool, the tenant transaction that arms RLS, URL helpers.

Also the in-memory tenant registry (tenants and issuers, refreshed by NOTIFY), the store's
errors and readiness probe, migrations and the embedded server `bulkhead dev` runs.
"""
