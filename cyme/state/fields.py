"""The checks every record's fields go through, and building a record from JSON.

Each check takes a value as a client sent it (JSON, or a form's text),
returns it as its type, or raises L{BadRequest} naming the field: the
models (L{cyme.state.models}) use them as converters and validators, the
command line and the API for their own values.
"""

import ipaddress
import math
import re

import attrs

from cyme.errors import BadRequest


# A DNS label: letters, digits, inner hyphens (and underscores, as some hosts have).
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def check_hostname(value, field="hostname"):
    """C{value} if a host name or IP address (IPv6 returned bare), else L{BadRequest}."""
    check_text(value, field, 255)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if bare is value and len(value) <= 253 and all(_LABEL_RE.match(l) for l in labels):
        return value
    raise BadRequest(field, f"{field} must be a host name or an IP address, not {value!r}")


def check_int(value, field, low, high=None):
    """Return C{value} as an int in [low, high], accepting decimal strings."""
    if isinstance(value, bool):
        raise BadRequest(field, f"{field} must be an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise BadRequest(field, f"{field} must be an integer") from None
    if not isinstance(value, int):
        raise BadRequest(field, f"{field} must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(field, f"{field} must be {bounds}")
    return value


def check_bool(value, field):
    """Return C{value} as a bool, accepting the usual spellings from forms."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRequest(field, f"{field} must be a boolean (true or false)")


def check_text(value, field, max_length=255, allow_empty=False):
    if not isinstance(value, str):
        raise BadRequest(field, f"{field} must be a string")
    if not allow_empty and not value:
        raise BadRequest(field, f"{field} must not be empty")
    if len(value) > max_length or any(ord(c) < 32 for c in value):
        raise BadRequest(
            field, f"{field} must be at most {max_length} printable characters"
        )
    return value


def check_json_object(value, field):
    """Return C{value} if it is a JSON object whose keys are strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadRequest(field, f"{field} must be a JSON object")
    return value


def build(cls, data, what):
    """Build C{cls} from a JSON object, naming unknown or missing fields."""
    data = check_json_object(data, what)
    known = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest(unknown[0], f"unknown {what} field: {unknown[0]}")
    missing = [
        a.name for a in attrs.fields(cls)
        if a.default is attrs.NOTHING and a.name not in data
    ]
    if missing:
        raise BadRequest(missing[0], f"{what} needs {missing[0]}")
    return cls(**data)


def as_converter(check, field, *args):
    """An attrs converter: C{check(value, field, *args)}."""
    # Converters run before validators and see raw form strings: they turn
    # "8" into 8 and "true" into True, or raise BadRequest naming the field.
    return lambda value: check(value, field, *args)


def as_validator(check, *args):
    """An attrs validator: C{check(value, <the field's name>, *args)}."""

    def validate(instance, attribute, value):
        check(value, attribute.name, *args)

    return validate


def check_seconds(value, field, high=None, *, zero=False):
    """
    Return C{value} (a number, or its decimal text) as a float of seconds.

    The one parser of durations: the API's timeouts, the records' and the
    command line's.  A duration is finite, more than 0 (at least 0 with
    C{zero}) and at most C{high} when given; anything else is a
    L{BadRequest} naming C{field}.
    """
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    valid = (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > 0 or (zero and value == 0))
        and (high is None or value <= high)
    )
    if not valid:
        if high is not None:
            what = f"a number of seconds in {'[' if zero else '('}0, {high:g}]"
        else:
            what = "a number of seconds" if zero else "a positive number of seconds"
        raise BadRequest(field, f"{field} must be {what}")
    return float(value)
