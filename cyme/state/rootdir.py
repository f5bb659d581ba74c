"""A branch's root directory: its lock, its id, its state file, its workers.

Layout under the root::

    branch.lock     held (flock) while a branch runs here; holds its pid
    branch.id       the id generated at the first start, kept for the next
    state.json      the desired state (see cyme.state.store)
    instances/<n>/  one directory per worker instance

Only the branch's user may read any of it (directories 0700, files 0600):
the state holds broker passwords, the workers' logs their tasks.  Opening
a root made by an older version tightens its modes.
"""

import errno
import fcntl
import os
import tempfile
import uuid

import attrs

from cyme.errors import StartupError


def _atomic_write(path, data):
    temp = path + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


@attrs.define
class RootDir:
    path: str
    lock_fd: int | None = None

    @property
    def state_path(self):
        return os.path.join(self.path, "state.json")

    @property
    def instances_path(self):
        return os.path.join(self.path, "instances")

    @classmethod
    def open(cls, path):
        """
        Create C{path} if missing, check that it is writable, and lock it.

        Two branches on one root would fight over the same workers, so the
        second one is refused with a message naming the first one's pid.
        """
        path = os.path.abspath(path)
        try:
            for directory in (path, os.path.join(path, "instances")):
                os.makedirs(directory, mode=0o700, exist_ok=True)
                os.chmod(directory, 0o700)
            for name in ("state.json", "branch.lock", "branch.id", "results.jsonl"):
                if os.path.exists(os.path.join(path, name)):
                    os.chmod(os.path.join(path, name), 0o600)
            # A name of its own: two branches starting at once on one root
            # must not remove each other's probe (the second one is to hear
            # "in use", not "not writable").
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise StartupError(
                f"root directory {path} is not writable: {e.strerror}"
            ) from None
        root = cls(path)
        root._lock()
        return root

    def _lock(self):
        lock_path = os.path.join(self.path, "branch.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            other = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    f"root directory {self.path} is in use by another "
                    f"cyme-branch (pid {other})"
                ) from None
            raise StartupError(f"cannot lock {lock_path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.lock_fd = fd

    def record_pid(self):
        """Rewrite the pid in the lock file (twistd may fork after opening)."""
        if self.lock_fd is not None:
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def close(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def branch_id(self):
        """The id kept in C{branch.id}, generated and saved at the first call."""
        id_path = os.path.join(self.path, "branch.id")
        try:
            with open(id_path, encoding="ascii") as f:
                value = f.read().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as e:
            raise StartupError(f"cannot read {id_path}: {e}") from None
        value = uuid.uuid4().hex[:12]
        _atomic_write(id_path, value.encode("ascii") + b"\n")
        return value
