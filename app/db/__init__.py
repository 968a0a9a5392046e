"""Postgres access: the runtime pool, the tenant transaction that arms RLS, URL helpers."""
