"""Chat: RAG orchestration, conversations, and the chat endpoints."""
