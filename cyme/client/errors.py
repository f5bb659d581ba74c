"""The errors of L{cyme.client}: one class per kind of failure a script acts on.

Every error carries the branch's message (C{str(error)}, one line) and,
when a branch answered, its HTTP C{status} and the whole JSON C{body}
(C{{"error": ..., "field": ..., "kind": ..., ...}}).
"""


class ClientError(Exception):
    """Something a call to cyme could not do."""

    #: The HTTP status of the answer; None when no answer came.
    status = None

    def __init__(self, message, status=None, body=None):
        # One line: a message ends up in logs and on a terminal's stderr.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        #: The answer's JSON (an object), or None.
        self.body = body

    @property
    def detail(self):
        """What the answer says besides its message (C{field}, C{kind}, C{name}...)."""
        if not isinstance(self.body, dict):
            return {}
        return {k: v for k, v in self.body.items() if k != "error"}


class ConnectionFailed(ClientError):
    """No answer: the branch is not reachable, TLS failed, or it took too long."""


class TaskFailed(ClientError):
    """A queued URL's task ended in C{FAILURE}; C{body} is its result JSON."""

    @property
    def traceback(self):
        return (self.body or {}).get("traceback")


class APIError(ClientError):
    """The branch answered with an error status."""


class BadRequest(APIError):
    """400: a value the branch refuses; C{detail["field"]} names it."""

    status = 400


class Unauthorized(APIError):
    """401: no token, or an unknown, expired or revoked one."""

    status = 401


class Forbidden(APIError):
    """403: the token lacks the scope the call needs."""

    status = 403


class NotFound(APIError):
    """404: no such app, instance, queue...; C{detail["kind"]} says which."""

    status = 404


class MethodNotAllowed(APIError):
    status = 405


class Conflict(APIError):
    """409: such as an instance name another app uses, or no room on any branch."""

    status = 409


class PayloadTooLarge(APIError):
    status = 413


class ServerError(APIError):
    """500 or another status this client has no class for."""

    status = 500


class BadGateway(APIError):
    """502: the broker refused a task."""

    status = 502


class Unavailable(APIError):
    """503: the branch cannot do it now (no supervisor, broker out of reach...)."""

    status = 503


class GatewayTimeout(APIError):
    """504: a worker or a branch did not answer in time, or a wait ran out."""

    status = 504


_BY_STATUS = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
                Conflict, PayloadTooLarge, BadGateway, Unavailable, GatewayTimeout)
}


def error_for(status, body):
    """The L{APIError} of an answer with C{status} and JSON C{body}."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        message = f"HTTP {status}"
        body = None
    return _BY_STATUS.get(status, ServerError)(message, status, body)
