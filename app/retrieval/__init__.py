"""Retrieval: chunking, embedding, the VectorIndex seam and its adapters, ingestion and search."""
