"""Delays between tries: exponential backoff with a cap and jitter.

One function serves every retry of the branch: reconnecting to a broker
(C{0.1 s} doubling to 5 s) and restarting a failing worker (at once, then
0.5 s doubling to 60 s).  A pure function of the attempt number (plus an
injected random source) so tests can pin it down, shaped like Twisted's
``ClientService`` retry policy.
"""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["backoff_delay", "backoff_policy"]

#: A broker back after an outage is found within 5 s (2.5 s to 5 s with
#: the jitter): tasks and workers wait on it, and a try every few seconds
#: costs a broker nothing.
DEFAULT_CAP = 5.0


def backoff_delay(
    attempt: int,
    *,
    initial: float = 0.1,
    factor: float = 2.0,
    cap: float = DEFAULT_CAP,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt number C{attempt} (1-based).

    Attempt 0 (or less) waits nothing: a worker killed once is back at once.
    The base delay is C{initial * factor ** (attempt - 1)}, capped at C{cap}; jitter then
    scales it by a factor in C{[1 - jitter, 1]} so that branches (or
    workers) cut off together do not come back in lockstep.
    """
    if attempt < 1:
        return 0.0
    try:
        base = min(cap, initial * factor ** (attempt - 1))
    except OverflowError:
        base = cap
    return base * (1.0 - jitter * rand())


def backoff_policy(
    *,
    initial: float = 0.1,
    factor: float = 2.0,
    cap: float = DEFAULT_CAP,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """L{backoff_delay} with its parameters bound: C{attempt -> seconds}."""

    def policy(attempt: int) -> float:
        return backoff_delay(
            attempt, initial=initial, factor=factor, cap=cap, jitter=jitter, rand=rand
        )

    return policy
