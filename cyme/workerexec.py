"""Entry point of a worker process: ``python -m cyme.workerexec <celery args>``.

The worker leaves the branch's session first, so that stopping the branch
(or a Ctrl-C in its terminal) does not take the workers down with it: a
restarted branch adopts them from their pid files.  Then it is simply
``celery`` with the given arguments, in this same process (same pid).
"""

import os
import sys


def main(argv):
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *argv]
    celery_main()


if __name__ == "__main__":
    main(sys.argv[1:])
