"""Secrets: redacted values, tenant-scoped refs, and the backends that store them (DESIGN §3.5)."""
