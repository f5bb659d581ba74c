"""The desired state: what the operators asked for, and where it is kept.

Owns the validated attrs records (``models``), the parsing of API
parameters into them (``params``), the stores (``store``: ``IStore``, a
JSON file or memory, with change events; ``schema``: the state file's
versions and their migration; ``replica``: another branch's records,
checked before a merge) and the branch's root directory (``rootdir``:
lock, id, state file, worker directories).

May import: ``cyme.errors``, ``cyme.logs``, ``cyme.listeners``.  Nothing
here knows of HTTP, the bus, the supervisor or queued URLs.
"""
