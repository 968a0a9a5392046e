"""Bulkhead: a multi-tenant RAG backend."""
