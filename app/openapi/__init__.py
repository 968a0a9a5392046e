"""The published HTTP contract: the OpenAPI 3.1 document, served and committed.

Wiring, like `app.main`: the document is Litestar's (read from every handler) completed by
`contract`, which names the request and response bodies of the domains, so it sits above them
all. `python -m app.openapi.document > docs/openapi.json` regenerates the committed copy.
"""
