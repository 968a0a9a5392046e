"""Tenant lifecycle: onboarding (apply a manifest), offboarding, provider key rotation and checks.

Above the domains and chat: a tenant's life touches its registry rows, secrets, vector
collections, API keys, conversations and provider keys, so this package may use all of them,
and nothing below it knows it exists. `bulkhead tenants` is its command line.
"""
