"""Supervision: keeping this branch's worker processes as the store wants.

Owns the supervisor (tick, converge, adoption, ping round, verification),
the per-worker lifecycle, the launchers and the fork server, the worker
process entry point, Celery's remote control spoken over AMQP, and the
reconciliation of what a live worker consumes.

May import: ``cyme.state``, ``cyme.amqp``, ``cyme.errors``, ``cyme.logs``.
"""
