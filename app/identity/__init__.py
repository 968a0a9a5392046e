"""Identity: who is calling. JWTs from tenant issuers, API keys, service tokens, the dev issuer.

The authentication middleware turns a verified credential into the request's TenantScope; the
route guards that check its roles are the edge's (`app.edge.guards`).
"""
