"""Tenancy core: the per-request TenantScope, and the manifest that describes a tenant.

The bottom of the layers: everything may import it; it imports nothing else of the service.
The manifest model comes with its JSON schema, its YAML source map (errors name the line),
its diff (what an apply changes) and the embedder spec it validates. The registry of
onboarded tenants is read from Postgres (`app.db.registry`); their lifecycle is
`app.lifecycle`.
"""
