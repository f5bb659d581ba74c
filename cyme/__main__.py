"""``python -m cyme``: the same as the ``cyme-branch`` command."""

from cyme.script import main

main()
