"""Secrets: redacted values, tenant-scoped refs, the backends that store them (docs/secrets.md)."""
