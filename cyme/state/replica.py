"""A replica as it comes from another branch, checked record by record.

Apps, queue declarations and tokens travel between branches as JSON (the
store's C{replica()}); before a merge, L{Replica.from_json} parses every
record with the models and every version, and refuses what does not
pass: a record that is not valid, one stored under a key that is not its
name (served under the wrong name, and refused by the state file at the
next start), a version that is no C{[milliseconds, branch id]}, a key of
no known kind.  A refused record is not merged, nor its version: the
branch keeps what it had, and says which keys it refused.
"""

import attrs

from cyme.errors import BadRequest
from cyme.state.models import App, Queue, check_name
from cyme.state.tokens import Token

#: The largest version: milliseconds that JSON numbers still hold exactly.
MAX_MS = 2**53


def check_version(value):
    """A version as stored, C{(milliseconds, branch id)}, or L{BadRequest}."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or type(value[0]) is not int or not 0 <= value[0] <= MAX_MS):
        raise BadRequest("versions", "a version is [milliseconds, branch id]")
    return (value[0], check_name(value[1], "versions"))


def _section(data, name):
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise BadRequest(name, f"replica {name} must be an object")
    return value


@attrs.frozen
class Replica:
    """
    Checked records: C{apps} (name -> L{App}), C{queues} (app -> name ->
    L{Queue}), C{tokens} (name -> L{Token}), C{versions} (key ->
    C{(ms, branch)}); a key with a version and no record is a tombstone.
    C{refused} lists C{(key, why)} of what was left out.
    """

    apps: dict = attrs.field(factory=dict)
    queues: dict = attrs.field(factory=dict)
    tokens: dict = attrs.field(factory=dict)
    versions: dict = attrs.field(factory=dict)
    refused: tuple = ()

    @classmethod
    def from_json(cls, data):
        """
        The replica C{data} holds; a L{BadRequest} only if it is no
        replica at all (not an object, or a section that is not one).
        """
        if not isinstance(data, dict):
            raise BadRequest("replica", "a replica must be an object")
        given = {name: _section(data, name) for name in ("apps", "queues", "tokens")}
        checked = {"apps": {}, "queues": {}, "tokens": {}, "versions": {}}
        refused = []
        for key, version in _section(data, "versions").items():
            # Named in a log line: never odd characters.
            said = str(key)[:200] if str(key).isprintable() else ascii(key)[:200]
            try:
                _add(checked, key, check_version(version), given)
            except BadRequest as e:
                refused.append((said, e.message))
            except Exception as e:  # noqa: BLE001 - anything a record may hold
                refused.append((said, f"not a record ({type(e).__name__})"))
        return cls(**checked, refused=tuple(refused))


def _add(checked, key, version, given):
    """Add the record of C{key} (or its tombstone) from C{given} to C{checked}."""
    kind, _, rest = key.partition("/")
    if kind == "app":
        record = _record(given["apps"].get(check_name(rest, "app")), App, rest)
        if record is not None:
            checked["apps"][rest] = record
    elif kind == "token":
        record = _record(given["tokens"].get(check_name(rest, "token")), Token, rest)
        if record is not None:
            checked["tokens"][rest] = record
    elif kind == "queue":
        app, _, name = rest.partition("/")
        declared = given["queues"].get(check_name(app, "app"), {})
        if not isinstance(declared, dict):
            raise BadRequest("queues", f"the queues of {app} must be an object")
        record = _record(declared.get(check_name(name, "queue")), Queue, name)
        if record is not None:
            checked["queues"].setdefault(app, {})[name] = record
    else:
        raise BadRequest("versions", "no such kind of record")
    checked["versions"][key] = version


def _record(data, cls, key):
    """C{cls} parsed from C{data} (None: a tombstone), whose name must be C{key}."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BadRequest("record", "a record must be an object")
    record = cls.from_json(data)
    if record.name != key:
        raise BadRequest("name", f"the record under {key!r} is named {record.name!r}")
    return record
