"""Tests of the cluster layer; L{seal}: a sealed bus for tests of any layer."""

from cryptography.fernet import Fernet

from cyme.cluster.keys import ClusterKey
from cyme.cluster.seal import FernetSeal

#: One cluster key for the tests that need their branches to share one.
KEY = ClusterKey("test.key", Fernet.generate_key())


def new_key(name="other.key"):
    """Another cluster key than L{KEY}."""
    return ClusterKey(name, Fernet.generate_key())


def seal(clock, *keys):
    """A L{FernetSeal} with C{keys} (default: L{KEY}), dated by C{clock}."""
    return FernetSeal(list(keys) or [KEY], clock)
