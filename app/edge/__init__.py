"""The HTTP edge: one input boundary for every request, and the API's published contract.

Every string that enters (path, query, the headers the service reads, JSON bodies, multipart
part names, file names and text fields) is checked here once, before any handler sees it, for
what Postgres, the vector store and the service can hold. A new endpoint inherits the checks.
"""
