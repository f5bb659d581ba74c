"""The state file's schema versions, and how an older file is brought up to date.

A state file says its schema (C{"schema"}).  One written by an older cyme
is migrated as it loads, in memory: the file itself is rewritten in the
current schema at the branch's first change, after its old bytes were
kept beside it (C{state.json.schema-<n>}), so that the older cyme can be
put back.  A file of a newer schema than this cyme's is refused: its
fields would be lost at the first write.

Schemas:

1. apps, queues, instances, tokens and their versions (cyme 0.1).
2. the same, with C{"written_by"} (the cyme version that wrote it), and
   every record under its own name: a record a forged replica merge put
   under another name (before bus messages were checked) is removed
   with its version, so that the branch takes the real one from its peers.
"""

import json
import os

from twisted.logger import Logger

from cyme import logs
from cyme.errors import StartupError
from cyme.fence import parse_entry

log = Logger(observer=logs.observer)

SCHEMA_VERSION = 2


def _from_1(data):
    """Schema 1 to 2: the records stored under another name are removed."""
    data = dict(data)
    versions = data.get("versions")
    versions = dict(versions) if isinstance(versions, dict) else versions
    notes = []

    def keep(records, kind, prefix):
        # What is not an object is left for the load to call corrupt.
        if not isinstance(records, dict):
            return records
        kept = {}
        for key, record in records.items():
            named = record.get("name") if isinstance(record, dict) else key
            if named == key:
                kept[key] = record
                continue
            if isinstance(versions, dict):
                versions.pop(prefix + key, None)
            notes.append(f"{kind} {named!r} stored under the key {key!r} (put there by "
                         "a forged replica merge) removed; its peers' copy comes back")
        return kept

    for section, kind in (("apps", "app"), ("tokens", "token"), ("instances", "instance")):
        if section in data:
            data[section] = keep(data[section], kind, f"{kind}/")
    if isinstance(data.get("queues"), dict):
        data["queues"] = {app: keep(queues, "queue", f"queue/{app}/")
                          for app, queues in data["queues"].items()}
    if versions is not None:
        data["versions"] = versions
    data["schema"] = 2
    return data, notes


_MIGRATIONS = {1: _from_1}


def migrate(data):
    """
    C{data}, the JSON object of a state file of schema 1 up to
    L{SCHEMA_VERSION} (ValueError for any other), in the current schema;
    and the lines that say what the migration removed, for the log.
    """
    schema = data.get("schema")
    if type(schema) is not int or not 1 <= schema <= SCHEMA_VERSION:
        raise ValueError(f"unknown schema version {schema!r}")
    notes = []
    while schema < SCHEMA_VERSION:
        data, said = _MIGRATIONS[schema](data)
        notes += said
        schema += 1
    return data, notes


def corrupt(path, error):
    """The L{StartupError} of a state file that cannot be read."""
    # Never start over an unreadable file: starting empty would overwrite
    # the operator's state at the first change.
    return StartupError(
        f"state file {path} is corrupt ({error}); restore it or move it away to start empty"
    )


def read(raw, path):
    """
    The state file C{path}'s bytes C{raw} as C{(JSON object in the current
    schema, the migration's notes, the schema it was written in)}; a
    L{StartupError} saying why not.
    """
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "schema" not in data:
            raise ValueError("no schema version")
        schema = data["schema"]
        if type(schema) is int and schema > SCHEMA_VERSION:
            raise StartupError(
                f"state file {path} has schema version {schema!r}, written by a newer "
                f"cyme ({data.get('written_by') or 'unknown'}); this cyme reads versions "
                f"up to {SCHEMA_VERSION}"
            )
        data, notes = migrate(data)
    except StartupError:
        raise
    except Exception as e:
        raise corrupt(path, e) from e
    if schema != SCHEMA_VERSION:
        log.warn("state file {path} is of schema {schema}, an older cyme's: it is rewritten "
                 "in schema {current} at the first change, the old one kept as {old}",
                 path=path, schema=schema, current=SCHEMA_VERSION, old=old_file(path, schema))
    for note in notes:
        log.warn("state file {path}: {note}", path=path, note=note)
    _warn_unreadable_hosts(data, path)
    return data, notes, schema


def _warn_unreadable_hosts(data, path):
    """Name each C{allowed_hosts} entry the fence cannot read (an older
    version took C{[1:2]}): it loads, and allows nothing until corrected."""
    apps = data.get("apps")
    for name, app in (apps.items() if isinstance(apps, dict) else ()):
        hosts = app.get("allowed_hosts") if isinstance(app, dict) else None
        for entry in (hosts if isinstance(hosts, list) else ()):
            try:
                parse_entry(entry)
            except ValueError as e:
                log.warn("state file {path}: app {app}'s allowed_hosts entry {entry!r} is "
                         "not one this version reads ({error}): it allows nothing (the app's "
                         "other entries still do); correct the app's allowed_hosts",
                         path=path, app=name, entry=entry, error=e)


def old_file(path, schema):
    """Where the bytes of the state file C{path} of an older C{schema} are kept."""
    return f"{path}.schema-{schema}"


def keep_old_file(path, schema, raw):
    """Keep C{raw}, the state file's bytes in its older C{schema}, beside it (0600)."""
    fd = os.open(old_file(path, schema), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
