"""Vectors: the VectorIndex seam and its adapters, Qdrant Edge (in-process) and Qdrant server.

Every operation takes the caller's TenantScope, and both adapters derive the tenant condition
from it in one place (`scoping`). Also here: caller metadata filters, the per-tenant Qdrant
keys and collections of server mode, shard upkeep, the dense embedding spaces, and opening
whichever backend `vectors.backend` names.
"""
