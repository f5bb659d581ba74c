"""A branch's root directory: its lock, its id, its state file, its workers.

Layout under the root::

    branch.lock     held (flock) while a branch runs here; holds its pid
    branch.id       the id generated at the first start, kept for the next
    state.json      the desired state (see cyme.state.store)
    instances/<n>/  one directory per worker instance
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
    with open(temp, "wb") as f:
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
            os.makedirs(os.path.join(path, "instances"), exist_ok=True)
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
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
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
