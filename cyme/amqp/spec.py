"""The AMQP 0-9-1 spec XML cyme ships, loaded once for txAMQP.

txAMQP ships no spec file (its default path is missing and fails with a
misleading "unknown url type"), so cyme carries RabbitMQ's extended 0-9-1
spec as package data: it adds confirm.select, basic.nack and exchange.bind
to the standard one.
"""

from __future__ import annotations

import functools
from importlib import resources

from txamqp import spec as txspec

__all__ = ["SPEC_NAME", "load_spec"]

SPEC_NAME = "amqp0-9-1.extended.xml"


@functools.cache
def load_spec() -> txspec.Spec:
    """The parsed spec; parsing takes tens of milliseconds, so it is shared."""
    resource = resources.files(__package__).joinpath("specs").joinpath(SPEC_NAME)
    # as_file gives a real path even when the package is zipped.
    with resources.as_file(resource) as path:
        return txspec.load(str(path))
