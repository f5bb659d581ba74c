"""Entry point of a worker process: ``python -m cyme.supervision.workerexec <celery args>``.

The arguments are those of ``celery -A <app> -b <broker> --workdir <dir>
worker <worker options>``, as L{cyme.supervision.workers.worker_command} writes them.

The worker leaves the branch's session first, so that stopping the branch
(or a Ctrl-C in its terminal) does not take the workers down with it: a
restarted branch adopts them from their pid files.  Then it runs Celery's
``worker`` command alone, in this same process (same pid): going through
``celery``'s main command would import every other subcommand first
(``celery amqp`` brings click_repl and prompt_toolkit), a quarter of a
worker's start-up for nothing a worker uses.
"""

import gc
import os
import sys

GLOBAL_OPTIONS = {"-A": "app", "--app": "app", "-b": "broker", "--broker": "broker",
                  "--workdir": "workdir"}


def split(argv):
    """C{(global options, worker arguments)} of C{… worker …}."""
    options = {}
    i = 0
    while i < len(argv) and argv[i] != "worker":
        name = GLOBAL_OPTIONS.get(argv[i])
        if name is None or i + 1 >= len(argv):
            raise SystemExit(f"workerexec: unexpected argument {argv[i]!r}")
        options[name] = argv[i + 1]
        i += 2
    if i >= len(argv):
        raise SystemExit("workerexec: no 'worker' command")
    return options, argv[i + 1:]


def main(argv):
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    run(argv)


def _freeze_once(**_):
    """Freeze the worker's objects before its first pool child is forked.

    Once: frozen objects are never collected, so freezing again as each
    later child is forked (autoscaling, C{--max-tasks-per-child}) would keep
    for ever the garbage of the tasks in flight then.
    """
    from celery import signals

    signals.worker_before_create_process.disconnect(_freeze_once)
    gc.freeze()


def run(argv):
    """Celery's worker command with C{argv} (global options, then C{worker …})."""
    options, worker_args = split(argv)
    sys.argv = ["celery", *argv]
    from celery import maybe_patch_concurrency

    # eventlet and gevent must patch before anything else is imported.
    maybe_patch_concurrency(worker_args)
    if options.get("workdir"):
        os.chdir(options["workdir"])
    if options.get("broker"):
        os.environ["CELERY_BROKER_URL"] = options["broker"]
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    from celery import signals

    # Its prefork pool children share its pages until written: what it holds
    # as it starts them is left out of their garbage collections (as the
    # fork server's objects are of the worker's).
    signals.worker_before_create_process.connect(_freeze_once, weak=False)
    app = find_app(options["app"])
    worker.params.extend(app.user_options.get("worker", []))
    worker.main(
        args=worker_args, prog_name="celery worker",
        obj=CLIContext(app=app, no_color=None, workdir=options.get("workdir")),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
