"""Retrieval: documents in, chunks out. The documents and search API, ingestion and search.

Parsing and chunking uploads, the document repository and its ACLs, the per-tenant embedder
route, search with grounding, reindexing to another embedder, reconciling Postgres with the
vector store after a crash, and the `ingest`, `reindex` and `vectors` commands. The vector
stores themselves are `app.vectors`.
"""
