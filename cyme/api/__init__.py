"""The HTTP API: Klein routes, parameter and body parsing, the admin page.

Owns what crosses HTTP: the original Cyme's routes and JSON shapes
(``routes``), the request class, JSON answers and form/multipart parsing
(``http``), the admin page (``admin``), the Prometheus text of
``/metrics`` (``prometheus``) and an in-memory client for tests
(``testing``).

May import: ``cyme.operations`` (the routes call ``IOperations`` and
nothing else), ``cyme.state`` (records and validation), ``cyme.errors``,
``cyme.logs``.
"""
