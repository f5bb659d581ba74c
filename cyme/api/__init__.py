"""The HTTP API: Klein routes, parameter and body parsing, the admin page.

Owns what crosses HTTP: the original Cyme's routes and JSON shapes
(``routes``, declared once in ``table``, from which ``openapi`` makes the
OpenAPI document with the schemas ``schemas`` makes from the models), who
may call and what they may see (``auth``: loopback
trust, tokens and scopes, the Origin and Host checks, password masking),
the root resource every request passes first (``guard``: path, size, the
caller, the audit line), the login form (``login``) and the sessions it
opens (``sessions``), the request class, the channel's deadlines, the
connection cap, the access log line, JSON answers and bounded
form/multipart/JSON parsing (``http``), the admin page (``admin``), the
Prometheus text of ``/metrics`` (``prometheus``), the timing of every
request by route template (``requestmetrics``) and an in-memory client for
tests
(``testing``).

May import: ``cyme.operations`` (the routes call ``IOperations`` and
nothing else), ``cyme.state`` (records and validation), ``cyme.errors``,
``cyme.logs``, ``cyme.metrics`` (the branch's histograms).
"""
