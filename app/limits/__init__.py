"""Rate limits and token quotas shared across replicas (manifest `limits`)."""
