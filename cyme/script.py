"""The ``cyme-branch`` command: ``twistd cyme-branch`` in the foreground.

It takes the same options as the twistd plugin.  twistd's pid file in the
current directory is turned off: the branch locks its own root directory,
so two branches can run from one directory without tripping over it.
"""

import sys


def main(argv=None):
    from twisted.python import usage
    from twisted.scripts.twistd import ServerOptions, runApp

    from cyme.tap import StartupFailed

    args = sys.argv[1:] if argv is None else list(argv)
    # twistd's own run(), with cyme-branch's name in its messages and a
    # start-up failure (root directory in use, corrupt state file) reported
    # as one line on stderr instead of under the whole usage text.
    sys.argv = ["cyme-branch", "--nodaemon", "--pidfile=", "cyme-branch", *args]
    config = ServerOptions()
    try:
        config.parseOptions(sys.argv[1:])
    except StartupFailed as e:
        sys.stderr.write(f"cyme-branch: {e}\n")
        sys.exit(1)
    except usage.UsageError as e:
        print(config)
        print(f"cyme-branch: {e}", file=sys.stderr)
        sys.exit(1)
    runApp(config)


if __name__ == "__main__":
    main()
