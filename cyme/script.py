"""The ``cyme-branch`` command: ``twistd cyme-branch`` in the foreground.

It takes the same options as the twistd plugin.  twistd's pid file in the
current directory is turned off: the branch locks its own root directory,
so two branches can run from one directory without tripping over it.
"""

import sys


def main(argv=None):
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["cyme-branch", "--nodaemon", "--pidfile=", "cyme-branch", *args]
    run()


if __name__ == "__main__":
    main()
