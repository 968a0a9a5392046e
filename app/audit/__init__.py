"""Audit: the per-request audit trail and the usage ledger."""
