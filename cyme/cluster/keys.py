"""The cluster key: the file that makes a branch a member of its cluster.

Every bus envelope is sealed with the cluster key (L{cyme.cluster.seal}):
branches that hold the same key see each other, and nobody else can read
or forge what they say.  Like Erlang's cookie, the default key is a file
in the user's home, C{$XDG_CONFIG_HOME/cyme/cluster.key} (or
C{~/.cyme/cluster.key}), made at the first start where it is missing: the
branches of one user on one machine form a cluster with no step, and a
branch elsewhere joins once the file is copied there.

A key file holds one Fernet key (32 random bytes, URL-safe base64) and
must be readable by its owner alone.  No error message ever quotes it.
"""

import os
import stat

import attrs
from cryptography.fernet import Fernet
from twisted.logger import Logger

from cyme import logs
from cyme.errors import StartupError

log = Logger(observer=logs.observer)

#: What every key error ends with: how to make a good one.
_HOW = "make one with: cyme-branch cluster-key new FILE"


@attrs.frozen
class ClusterKey:
    """A cluster key and the file it came from (the secret never in a repr)."""

    path: str
    secret: bytes = attrs.field(repr=False)


def default_path(environ=None):
    """
    Where a branch looks for its key when C{--cluster-key-file} is not
    given: under C{$XDG_CONFIG_HOME} when it is set (and absolute, as the
    XDG specification wants), else under C{$HOME}.
    """
    environ = os.environ if environ is None else environ
    config = environ.get("XDG_CONFIG_HOME")
    if config and os.path.isabs(config):
        return os.path.join(config, "cyme", "cluster.key")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cyme", "cluster.key")


def new_key_file(path):
    """
    Write a fresh key to C{path} (mode 0600; its directory made 0700 if
    missing); never over an existing file.  Returns the L{ClusterKey}.
    Two branches starting at once both end up with the one written first.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot make the directory {directory} of the cluster key: "
                           f"{e.strerror}") from None
    secret = Fernet.generate_key()
    # Written whole under a name of its own, then linked into place: a
    # branch reading the key meanwhile never sees half of it, and a key
    # made at the same moment by another branch is never replaced.
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        finally:
            os.unlink(temp)
    except FileExistsError:
        raise StartupError(f"cluster key file {path} exists already: not overwritten") from None
    except OSError as e:
        raise StartupError(f"cannot write the cluster key file {path}: {e.strerror}") from None
    return ClusterKey(path, secret)


def read_key_file(path, option="--cluster-key-file"):
    """The L{ClusterKey} in C{path}; a L{StartupError} saying what is wrong."""
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StartupError(f"{option}: no cluster key file {path}; {_HOW}") from None
    except OSError as e:
        raise StartupError(f"{option}: cannot read the cluster key file {path}: "
                           f"{e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StartupError(f"{option}: {path} is not a regular file")
        if info.st_mode & 0o077:
            raise StartupError(
                f"{option}: the cluster key file {path} may be read by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        secret = os.read(fd, 1024).strip()
    finally:
        os.close(fd)
    try:
        Fernet(secret)
    except (ValueError, TypeError):
        raise StartupError(f"{option}: {path} holds no cluster key; {_HOW}") from None
    return ClusterKey(path, secret)


def keys_at_start(path=None, previous=None, environ=None):
    """
    The keys a starting branch's bus uses: C{([key, previous key], made)}.
    The first key is the one in C{path} when given (which must exist),
    else the default file, made if missing (C{made} then True); the one
    in C{previous}, if given, still opens envelopes.
    """
    made = False
    if path is not None:
        key = read_key_file(path)
    else:
        path = default_path(environ)
        key = None
        if not os.path.lexists(path):
            try:
                key, made = new_key_file(path), True
                log.info("made the cluster key {path}: copy it to the machines of the other "
                         "branches of this cluster (README: Security)", path=path)
            except StartupError:
                if not os.path.lexists(path):
                    raise
                # Another branch made it first: that key is the one.
        key = key or read_key_file(path, "the default cluster key")
    if previous is None:
        return [key], made
    return [key, read_key_file(previous, "--previous-cluster-key-file")], made


def bus_keys(path=None, previous=None, open_bus=False):
    """
    The keys of a starting branch's bus (L{keys_at_start}), or none for an
    open bus, which takes no key file (ValueError).
    """
    if not open_bus:
        return keys_at_start(path, previous)[0]
    if path or previous:
        raise ValueError("--insecure-open-bus runs the bus without a key: "
                         "give it no cluster key file")
    return []
