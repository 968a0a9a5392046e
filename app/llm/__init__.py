"""LLM providers behind one protocol, and each tenant's chain that fails over between them.

The chains are built from the manifests and cached per tenant (`tenant_chains`), rebuilt when a
tenant's manifest changes; breakers, hedging, pricing and the embeddings client live here too.
"""
