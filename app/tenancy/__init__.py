"""Tenants: manifests, the registry of active tenants and issuers, and the per-request scope."""
