"""Errors that the API turns into JSON answers with a fitting HTTP status.

Every layer raises these; only the web layer renders them, as
C{{"error": "...", ...}} bodies.
"""


class CymeError(Exception):
    """An error a client caused or can act on; C{status} is its HTTP code."""

    status = 500

    def __init__(self, message, **detail):
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self):
        return {"error": self.message, **self.detail}


class BadRequest(CymeError):
    """Invalid input; C{field} names the parameter at fault."""

    status = 400

    def __init__(self, field, message):
        super().__init__(message, field=field)
        self.field = field


class NotFound(CymeError):
    status = 404

    def __init__(self, kind, name, message=None):
        super().__init__(message or f"no such {kind}: {name}", kind=kind, name=name)


class Conflict(CymeError):
    status = 409


class MethodNotAllowed(CymeError):
    status = 405


class PayloadTooLarge(CymeError):
    status = 413


class StartupError(Exception):
    """The branch cannot start; the message says why, for the operator."""


class GatewayTimeout(CymeError):
    """A worker or another branch did not answer in time."""

    status = 504


class RemoteError(CymeError):
    """An error another branch (over the bus) answered with: same status, same body."""

    def __init__(self, status, body):
        message = body.get("error", "error") if isinstance(body, dict) else str(body)
        super().__init__(message)
        self.status = status
        self.body = body

    def to_json(self):
        return self.body


class Unavailable(CymeError):
    status = 503
