"""cyme.cli: ``cyme``, the management command, built with click on
L{cyme.client}; like the client, it imports nothing of the daemon."""

from cyme.cli.main import cli, main

__all__ = ["cli", "main"]
