"""Identity: JWT verification against tenant issuers, the dev issuer, guards."""
