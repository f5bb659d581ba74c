"""A worker app for the tests: cyme's own, telling what its worker imported as it started.

A test has the fork server fork a worker with ``-A tests.supervision.importprobe``;
the worker and its pool child each write one JSON line to the file named by
``CYME_PROBE_OUT`` once started (the worker when ready, the pool child when
initialised): the modules imported since this app module was, besides those
the app itself brought (``imported``), and how many objects their garbage
collector leaves out (``frozen``, C{gc.get_freeze_count()}).
"""

import gc
import json
import os
import sys

_before = set(sys.modules)
_frozen_at_import = gc.get_freeze_count()

from celery import signals  # noqa: E402

from cyme.tasks.worker import app  # noqa: E402, F401

_own = set(sys.modules) - _before


def _report(role):
    line = {"role": role, "pid": os.getpid(),
            "imported": sorted(set(sys.modules) - _before - _own),
            "frozen": gc.get_freeze_count(), "frozen_at_import": _frozen_at_import}
    with open(os.environ["CYME_PROBE_OUT"], "a") as f:
        f.write(json.dumps(line) + "\n")


signals.worker_ready.connect(lambda **_: _report("worker"), weak=False)
signals.worker_process_init.connect(lambda **_: _report("pool child"), weak=False)
