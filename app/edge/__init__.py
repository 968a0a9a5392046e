"""The HTTP edge: one input boundary, the route guards, and how every error leaves.

Below the domains, whose controllers use it: the field-naming of refusals (`fields`), the text
rules (`text`), problem+json rendering and the exception handlers (`handlers`), the role
guards (`guards`), the input middleware and the server options. The published contract (the
OpenAPI document) is wiring: `app.openapi`.

Every string that enters (path, query, the headers the service reads, JSON bodies, multipart
part names, file names and text fields) is checked here once, before any handler sees it, for
what Postgres, the vector store and the service can hold. A new endpoint inherits the checks.
"""
