"""Supervision: keeping this branch's worker processes as the store wants.

Owns the supervisor (``supervisor``: tick, converge, adoption, who is
judged and verified), the per-worker lifecycle (``lifecycle``: the state
machine and its timers, over the record and figures of ``workerstate``),
liveness (``liveness``: ping rounds, start-up poll), the launchers and the
fork server, the worker process entry point, Celery's remote control
spoken over AMQP (``control``), and the reconciliation of what a live
worker consumes (``consuming``).

May import: ``cyme.state``, ``cyme.amqp``, and the base modules
(``cyme.errors``, ``cyme.logs``, ``cyme.backoff``, ``cyme.gather``,
``cyme.listeners``); the fork server, which runs in the workers' process,
also imports the task code of ``cyme.tasks`` before it forks.
"""
