"""The branch as a service: the parent of every other, holding its root directory.

L{BranchService} records the branch's pid and, while it serves HTTP, its
loopback URL (C{api.url}, for C{cyme-branch token}) in the root directory;
hands twistd the log observer of C{--log-format json}; and turns a port in
use into one line and a non-zero exit.
"""

import contextlib
import os

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python import components

from cyme import __version__, logs


class BranchService(service.MultiService):
    """The branch: its root directory held for as long as it runs."""

    log = Logger(observer=logs.observer)

    def __init__(self, root, branch_id, api_url=None, log_observer=None):
        super().__init__()
        self.root = root
        self.branch_id = branch_id
        #: Written to the root's C{api.url} while the branch runs.
        self.api_url = api_url
        #: twistd's log observer instead of its own (C{--log-format json}).
        self.log_observer = log_observer

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, components.Componentized):
            # twistd's application: twistd logs to the observer it holds
            # (it asks once it has made the application from this service).
            parent.setComponent(ILogObserver, self.log_observer)

    def _api_file(self):
        return os.path.join(self.root.path, "api.url")

    def startService(self):
        self.root.record_pid()
        if self.api_url is not None:
            fd = os.open(self._api_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.api_url + "\n")
        self.log.info(
            "cyme branch {branch} (cyme {version}) in {root}",
            branch=self.branch_id, version=__version__, root=self.root.path,
        )
        with _exit_if_cannot_listen(self.log):
            super().startService()

    def stopService(self):
        if self.api_url is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._api_file())
        return super().stopService()

    def privilegedStartService(self):
        # twistd listens here, before it drops privileges.
        with _exit_if_cannot_listen(self.log):
            super().privilegedStartService()


@contextlib.contextmanager
def _exit_if_cannot_listen(log):
    """
    A port in use is an operator's mistake, not a bug: one line and a
    non-zero exit rather than twistd's traceback.
    """
    try:
        yield
    except CannotListenError as e:
        log.critical("cyme branch cannot start: {error}", error=e)
        raise SystemExit(1) from None
