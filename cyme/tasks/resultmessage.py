"""What a result message on a branch's result queue may say, read defensively.

Anyone who may publish on an app's broker can publish to a branch's result
queue (C{cyme.results.<branch id>}).  A branch records a result only for a
task it published and still holds as pending (L{cyme.tasks.journal}); a
message that is not a result of that shape, or names another task, is
acknowledged, counted and dropped, and never reaches the journal.
"""

from cyme.amqp import mask_passwords

#: Celery's task states (celery.states): what a result message may report.
STATES = frozenset([
    "PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "REVOKED", "REJECTED",
    "RETRY", "IGNORED",
])
#: Task ids are cyme's UUIDs; longer is not one of them.
MAX_ID = 64


def read_result(body, correlation_id):
    """
    C{(task id, state, fields)} from a decoded message C{body} (Celery's
    result message: C{task_id}, C{status}, C{result}, C{traceback},
    C{date_done}), or None where it is not of that shape.
    """
    if not isinstance(body, dict):
        return None
    task_id = body.get("task_id") or correlation_id
    status = body.get("status")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID:
        return None
    if not isinstance(status, str) or status not in STATES:
        return None
    result = body.get("result")
    if isinstance(result, dict) and isinstance(result.get("url"), str):
        # The final URL of a webhook: its credentials are not for readers.
        result = {**result, "url": mask_passwords(result["url"])}
    elif isinstance(result, dict) and isinstance(result.get("exc_message"), list):
        result = {**result, "exc_message": [
            mask_passwords(m) if isinstance(m, str) else m for m in result["exc_message"]]}
    fields = {"result": result}
    for key in ("traceback", "date_done"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            return None
        fields[key] = value
    return task_id, status, fields
