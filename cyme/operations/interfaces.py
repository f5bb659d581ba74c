"""``IOperations``: everything the HTTP API asks of a branch, and nothing more.

The routes of L{cyme.api} call this interface and only this interface; the
local implementation performs an operation on this branch, the cluster one
runs it on the branch that owns the record.  Every method is a coroutine
(or returns a Deferred) unless it says it is a plain method; values in are the request's parameters (a dict
of strings or JSON values), values out are JSON-ready.  Writes to
replicated records and listings also return C{missing}: the ids of the
branches that did not answer (the answer is partial).  Errors are
L{cyme.errors.CymeError}s.
"""

from zope.interface import Attribute, Interface


class IOperations(Interface):
    # The branch and the cluster

    branch_id = Attribute("The id of the branch answering (a string).")

    def metrics():
        """
        This branch's figures for C{/metrics} as they are now (a plain
        method, not a coroutine), each of those of the parts it runs: the
        supervisor's C{"ticks"}, C{"messages"}, C{"states"}, C{"by_app"}
        and C{"workers"} (L{cyme.supervision.workerstate.worker_figures});
        the queued URLs' C{"queued"} (by outcome),
        C{"results_stored"} (by state) and C{"results_dropped"}; on a
        cluster, the bus's C{"bus_dropped"} (by reason), C{"peers"} (by
        state) and the replication's C{"merges"} (by source and outcome).
        """

    def health(apps=True):
        """
        Whether this branch is ready (a plain method): C{{"ready", "branch",
        "failing", "instances"}}, C{failing} naming why each failing part
        fails, and with C{apps} each app's broker as this branch sees it
        (L{cyme.operations.health.BranchHealth}).  No secret is in it.
        """

    def list_branches():
        """The ids of the live branches."""

    def get_branch(branch_id):
        """
        A branch's JSON: id, url, instances, load, version, protocol,
        uptime, online; this branch's own also says what its bus does
        (C{"bus"}: sealed or not, messages dropped, branches heard of that
        speak another protocol).
        """

    def local_instances():
        """
        The JSON of every instance this branch runs (as L{get_instance}
        shows it), by app then name: the admin page's own table.
        """

    def describe_instances(drift_only=False):
        """
        C{(instances, missing)}: the JSON of every instance of the cluster
        (as L{get_instance} shows it, with its C{drift}), or with
        C{drift_only} of those whose drift is not empty; an offline
        branch's instances as all that is known of them (state
        C{offline}, drift of kind C{branch}).
        """

    def watch_events(deliver, match=None, after=(), last=0):
        """
        Tell C{deliver(event)} the events of the cluster (a plain method):
        each a JSON object C{{"id", "time", "branch", "type", "app",
        "instance", "reason", "peer"}} for which C{match(Event)} is true,
        first those after the positions C{after} (C{[(branch, n)]}, a
        C{reset} event for a position no longer held) or the latest
        C{last}, then each new one.  Returns the watch, whose C{stop()}
        ends it; L{cyme.errors.Unavailable} when the branch serves too
        many (L{cyme.operations.eventhub}).
        """

    # Apps

    def list_apps():
        """C{(names, missing)}."""

    def get_app(name):
        """The app's JSON (404 if unknown)."""

    def put_app(name, values, wait=True):
        """
        Create or change an app: C{(json, created, missing)}.  Without
        C{wait}, the other branches are sent the change and not waited for
        (so none is missing); the same for every C{wait} of a replicated
        record below.
        """

    def delete_app(name, wait=True):
        """Delete an app, its queues and instances: C{missing}."""

    # Queue declarations

    def list_queues(app):
        """C{(names, missing)}."""

    def get_queue(app, name):
        """The queue's JSON."""

    def put_queue(app, name, values, wait=True):
        """C{(json, created, missing)}."""

    def delete_queue(app, name, wait=True):
        """C{missing}."""

    # Instances

    def list_instances(app, fresh=False):
        """
        C{(names, missing)}: with C{fresh}, asked of the branches that own
        them rather than answered from what this branch knows.
        """

    def app_of_instance(name):
        """The app of instance C{name} (instance names are unique)."""

    def get_instance(app, name):
        """The instance's JSON, with its broker and live state."""

    def put_instance(app, name, values, wait=True, branch=None):
        """
        Create or change an instance (C{name} None: a new UUID):
        C{(json, created)}; with C{wait}, once its worker answered a ping.
        """

    def delete_instance(app, name):
        """Delete the instance; its worker is stopped."""

    def add_consumer(app, name, queue):
        """Make the instance consume C{queue}: True if it was new."""

    def cancel_consumer(app, name, queue):
        """Stop the instance consuming C{queue}."""

    def get_consumer(app, name, queue):
        """The declaration of C{queue} if the instance consumes it (404 if not)."""

    def instance_queues(app, name):
        """The names of the queues the worker consumes."""

    def get_autoscale(app, name):
        """C{{"max": n, "min": n}}."""

    def set_autoscale(app, name, values):
        """C{{"max": n, "min": n}} after the change (the same without one)."""

    def restart(app, name, wait=True):
        """Restart the worker; its JSON once it answers (at once without C{wait})."""

    def set_enabled(app, name, enabled, wait=True):
        """Enable or disable the instance; its JSON (at once without C{wait})."""

    def stats(app, name):
        """The worker's live statistics."""

    # Rolling restarts (L{cyme.operations.rolling})

    def restart_app(app, values):
        """
        Start restarting the app's instances a few at a time (C{parallel},
        default 1): the restart's JSON at once, with its C{id}.
        """

    def get_restart(restart_id):
        """A rolling restart's progress (from the branch that coordinates it)."""

    # Queued URLs

    def queue_task(app, queue, method, url, query, body, content_type, timeout):
        """Publish a queued URL: C{{"uuid", "url", "queue", "method"}}."""

    def task(app, task_id):
        """C{{"uuid", "state", "result"[, "traceback"]}}."""

    def wait_task(app, task_id, timeout):
        """
        C{(json, ready)}: the task's JSON once it is ready (True), or as it
        is after C{timeout} seconds (False).
        """

    # Tokens (the admin scope)

    def list_tokens():
        """Every token's JSON: name, scopes, created, expires (no secret)."""

    def create_token(values, wait=True):
        """
        Make a token from C{name}, C{scope} (C{read,write}) and C{expires}
        (C{30d}): C{(json, missing)}, the JSON with the secret (C{token}),
        which is shown this once.
        """

    def revoke_token(name, wait=True):
        """Revoke a token everywhere: C{missing}."""

    def authenticate(secret):
        """
        The L{cyme.state.tokens.Token} of C{secret} if it is valid (known,
        not expired), else None (a plain method, not a coroutine).
        """
