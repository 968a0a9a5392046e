"""LLM providers behind one protocol, and the per-tenant chain that fails over between them."""
