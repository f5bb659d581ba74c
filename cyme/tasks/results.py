"""Queued URLs: webhook tasks published by the branch, and their results.

The branch publishes each task itself (Celery's message protocol 2, over
txAMQP, with publisher confirms) to the queue's exchange on the app's
broker, naming as C{reply_to} its own durable result queue on that broker
(C{cyme.results.<branch id>}).  Workers send every state update there
(STARTED, SUCCESS, FAILURE, RETRY); the branch writes each to its
L{ResultJournal} and acknowledges the message only once it is on disk.
"""

import base64
import collections
import json
import uuid

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import logs
from cyme.amqp import AMQPError, mask_passwords, parse_broker_url
from cyme.amqp.codec import PartlyEncoded, encode_fields
from cyme.errors import CymeError, Unavailable
from cyme.tasks.journal import JournalClosed
from cyme.tasks.resultmessage import read_result
from cyme.tasks.urlcheck import URLCheck

TASK_NAME = "cyme.webhook"


class PublishFailed(CymeError):
    """The broker did not take the task: nothing was queued."""

    status = 502


class BrokerUnreachable(PublishFailed):
    """No connection to the app's broker in time: try again later."""

    status = 503


# The task headers that are the same for every task, encoded once.
_FIXED_HEADERS = {
    "lang": "py",
    "task": TASK_NAME,
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "parent_id": None,
    "argsrepr": "()",
    "ignore_result": False,
}
_FIXED_ENCODED = encode_fields(_FIXED_HEADERS)


def task_message(task_id, kwargs, origin):
    """The headers and body of a Celery protocol-2 message for the task."""
    kwargsrepr = repr(kwargs)
    headers = PartlyEncoded(_FIXED_HEADERS, _FIXED_ENCODED, {
        "id": task_id,
        "root_id": task_id,
        "kwargsrepr": kwargsrepr if len(kwargsrepr) <= 1024 else kwargsrepr[:1021] + "...",
        "origin": origin,
    })
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return headers, json.dumps(body).encode("utf-8")


class BrokerLink:
    """One app broker: a confirming channel to publish, the result consumer."""

    log = Logger(observer=logs.observer)

    def __init__(self, url, pool, results_queue, journal, clock, dropped, stored):
        self.url = url
        #: Called with the broker's name for each message dropped, and
        #: with the state of each result recorded.
        self._dropped, self._stored = dropped, stored
        self.results_queue = results_queue
        self.channel = None
        self._pool = pool
        self._journal = journal
        self._clock = clock
        self._declared = set()
        #: The connection the channels are on, while it is up.
        self._connection = None
        self._reopening = None
        self._waiting = []  # a Deferred per publish waiting for the channel
        # Named without its password, which no log line or error carries.
        self.shown = parse_broker_url(url).to_url()
        self._listener = pool.on_connection(url, self._setup, self._lost,
                                            what=f"task publishing on {self.shown}", log=self.log)

    @property
    def busy(self):
        """Whether a publish waits for this link's channel."""
        return bool(self._waiting)

    def close(self):
        """Give the connection back to the pool (closed once nobody uses it)."""
        self.channel = None
        return self._pool.release(self.url, self._listener)

    async def _setup(self, connection):
        results = await connection.channel(timeout=10)
        queue = self.results_queue
        await results.queue_declare(queue, durable=True, auto_delete=False, timeout=10)
        await results.basic_qos(prefetch_count=512, timeout=10)
        await results.consume(queue, self._result, no_ack=False, timeout=10)
        self._connection = connection
        # Publishes that come meanwhile wait for this channel, not another.
        self._reopening = defer.ensureDeferred(self._open_publishing())
        try:
            await self._reopening
        finally:
            self._reopening = None

    async def _open_publishing(self):
        channel = await self._connection.channel(timeout=10)
        await channel.confirm_select(timeout=10)
        self.channel = channel
        self._declared.clear()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(channel)

    def _lost(self, reason):
        self.channel = self._connection = None

    def _channel(self, timeout):
        if self.channel is not None and self.channel.is_open:
            return defer.succeed(self.channel)
        # One Deferred each: a Deferred's result goes down one chain of
        # callbacks, and one publish timing out must not fail the others.
        d = defer.Deferred(self._waiting.remove)
        self._waiting.append(d)
        d.addTimeout(timeout, self._clock)
        if self._connection is not None and self._reopening is None:
            # The broker closed the channel (a refused declaration or
            # publish) while the connection stays: a new one, or every
            # task of this broker would wait for a set-up that never comes.
            self._reopening = defer.ensureDeferred(self._open_publishing())
            self._reopening.addErrback(
                lambda f: self.log.warn("cannot reopen the task channel on {broker}: {error}",
                                        broker=self.shown, error=f.getErrorMessage()))
            self._reopening.addBoth(self._reopened)
        return d.addErrback(self._unreachable)

    def _reopened(self, _):
        self._reopening = None

    def _unreachable(self, failure):
        failure.trap(defer.TimeoutError)
        why = self._pool.last_error(self.url)
        raise BrokerUnreachable(
            f"broker {self.shown} not reachable" + (f": {why}" if why else ""))

    async def publish(self, queue, task_id, headers, body, timeout):
        channel = await self._channel(timeout)
        key = (queue.name, queue.exchange, queue.routing_key)
        if key not in self._declared:
            await self._declare(channel, queue)
            self._declared.add(key)
        try:
            await channel.publish(
                queue.exchange, queue.routing_key, body,
                content_type="application/json", content_encoding="utf-8",
                delivery_mode=2, priority=0, correlation_id=task_id,
                reply_to=self.results_queue, headers=headers, timeout=timeout,
            )
        except AMQPError as e:
            raise PublishFailed(f"the broker did not confirm the task: {e}") from None

    async def _declare(self, channel, queue):
        # Declared as Celery declares them (durable), so that a task queued
        # before any worker consumes the queue waits in it.
        options = queue.options
        durable = bool(options.get("durable", True))
        auto_delete = bool(options.get("auto_delete", False))
        try:
            if queue.exchange:
                await channel.exchange_declare(
                    queue.exchange, queue.exchange_type, durable=durable,
                    auto_delete=auto_delete, timeout=10,
                )
            await channel.queue_declare(
                queue.name, durable=durable, auto_delete=auto_delete, timeout=10
            )
            if queue.exchange:
                await channel.queue_bind(
                    queue.name, queue.exchange, routing_key=queue.routing_key, timeout=10
                )
        except AMQPError as e:
            self.channel = None
            raise PublishFailed(
                f"the broker refused the declaration of queue {queue.name}: {e}"
            ) from None

    def _result(self, message):
        try:
            body = json.loads(message.body)
        except ValueError:
            body = None
        reading = read_result(body, message.correlation_id)
        if reading is None or not self._journal.awaits(reading[0]):
            # Not a result of a task this branch published and waits for:
            # anyone with the broker can publish here.
            message.ack()
            self._dropped(self.shown)
            return None
        task_id, status, fields = reading
        d = self._journal.record(task_id, status, **fields)
        # Acknowledged only once it is on disk: a crash before that leaves
        # the result in the queue for the next start.
        d.addCallbacks(self._recorded, self._not_recorded,
                       callbackArgs=(message, status), errbackArgs=(task_id, status))
        return d

    def _recorded(self, _, message, status):
        message.ack()
        self._stored(status)

    def _not_recorded(self, failure, task_id, status):
        # Not acknowledged: the broker delivers it again once this channel
        # is gone (the journal is closed while the branch stops; a write
        # error was logged by the journal).
        self.log.warn(
            "result {status} of task {task_id} not recorded: {error}",
            status=status, task_id=task_id, error=failure.getErrorMessage(),
        )


class TaskService(service.Service):
    """Publishes queued URLs and keeps their results."""

    log = Logger(observer=logs.observer)
    name = "tasks"

    def __init__(self, pool, journal, branch_id, clock, store, publish_timeout=10.0,
                 disk=None, url_check=None):
        # The branch's broker connections (L{cyme.amqp.BrokerPool}).
        self.pool = pool
        self.journal = journal
        # The journal's thread (L{cyme.tasks.journal.DiskThread}), if it has one.
        self.disk = disk
        self.branch_id = branch_id
        self.clock = clock
        self.store = store
        self.publish_timeout = publish_timeout
        self.results_queue = f"cyme.results.{branch_id}"
        # The fence at queue time (L{cyme.tasks.urlcheck.URLCheck}).
        self.url_check = url_check if url_check is not None else URLCheck(clock)
        self.links = {}
        self._expiry = None
        #: Messages on the result queue that were no result of this
        #: branch's pending tasks (L{cyme.tasks.resultmessage}).
        self.dropped = 0
        #: Queued URLs since the start: C{accepted} (the broker has the
        #: task), C{refused} (its URL was: L{URLCheck}), C{failed} (the
        #: broker or the journal did not take it).
        self.queued = {"accepted": 0, "refused": 0, "failed": 0}
        #: Results of the workers recorded since the start, by state.
        self.stored = collections.Counter()
        self._drop_log = logs.Occasional(clock)

    #: Seconds between two sweeps of the results past their retention.
    expire_interval = 600.0

    def startService(self):
        super().startService()
        if self.disk is not None:
            self.disk.start()
        # Expired results leave memory and the file even when no new one
        # comes to trigger a compaction.
        self._expiry = LoopingCall(self._expire)
        self._expiry.clock = self.clock
        self._expiry.start(self.expire_interval, now=False)
        # Results that came while the branch was down wait on every broker
        # it ever published to: consume them all again.
        for app in self.store.apps():
            try:
                self.link(app.broker.as_url())
            except Exception as e:
                # A record an older version let in (a broker host no URL can
                # carry) must not stop the branch: its app's tasks wait.
                self.log.error("app {app}: cannot consume its results: {error}",
                               app=app.name, error=mask_passwords(str(e)))

    def _expire(self):
        try:
            gone = self.journal.expire()
        except Exception:
            self.log.failure("cannot expire old results")
            return
        if gone:
            self.log.info("{count} results expired", count=gone)

    def stopService(self):
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        # Fires once every result recorded is on disk.
        closed = self.journal.close()
        if self.disk is not None:

            def stop_disk(result):
                self.disk.stop()
                return result

            closed.addBoth(stop_disk)
        return closed

    def when_ready(self, task_id):
        """A Deferred of the task's record once it is ready (its result came)."""
        return self.journal.when_ready(task_id)

    def release_unused(self, change=None):
        """
        Close the links to brokers that no app uses any more (a store
        listener): a deleted app, or an app moved to another broker, leaves
        no connection open behind it.  A link a publish waits on stays until
        the next change.
        """
        used = {app.broker.as_url() for app in self.store.apps()}
        for url in [u for u, link in self.links.items() if u not in used and not link.busy]:
            self.log.info("task publishing on {url} released: no app uses it",
                          url=parse_broker_url(url).to_url())
            self.links.pop(url).close()

    def link(self, url):
        link = self.links.get(url)
        if link is None:
            link = self.links[url] = BrokerLink(
                url, self.pool, self.results_queue, self.journal, self.clock, self._dropped,
                self._stored,
            )
        return link

    def _stored(self, status):
        self.stored[status] += 1

    def _dropped(self, broker):
        self.dropped += 1
        held = self._drop_log.due()
        if held is not None:
            self.log.warn(
                "dropped a message on {queue} at {broker} that is no result of a task "
                "this branch waits for ({count} dropped since start)",
                queue=self.results_queue, broker=broker, count=self.dropped,
            )

    async def queue(self, app, queue, method, url, query=None, body=None,
                    content_type=None, timeout=None):
        """
        Publish a webhook task; its id once the broker confirmed it and the
        branch recorded it.
        """
        try:
            await self.url_check.check(url, app.allowed_hosts)
        except CymeError:
            self.queued["refused"] += 1
            raise
        try:
            task_id = await self._publish(app, queue, method, url, query, body,
                                          content_type, timeout)
        except Exception:
            self.queued["failed"] += 1
            raise
        self.queued["accepted"] += 1
        return task_id

    async def _publish(self, app, queue, method, url, query, body, content_type, timeout):
        if self.journal.closed:
            # Stopping: a task published now could not be recorded, and its
            # sender, told it failed, would send it again.
            raise Unavailable("the branch is stopping: nothing was queued")
        task_id = str(uuid.uuid4())
        kwargs = {
            "method": method,
            "url": url,
            "query": query or {},
            "body": body,
            "content_type": content_type,
            "timeout": timeout or app.task_timeout,
            # The workers fence with their own copy (from the branch that
            # started them); this one may only narrow it, and fences the
            # workers an older cyme started.
            "allowed_hosts": list(app.allowed_hosts),
        }
        if self.url_check.deny_private:
            # Only when set: a worker of an older cyme takes no such argument.
            kwargs["deny_private"] = True
        if isinstance(body, bytes):
            # Raw bodies travel byte for byte, whatever their charset.
            kwargs["body"] = base64.b64encode(body).decode("ascii")
            kwargs["body_encoding"] = "base64"
        headers, payload = task_message(task_id, kwargs, f"cyme@{self.branch_id}")
        link = self.link(app.broker.as_url())
        # The record and the publish go at once: the answer waits for the
        # slower of the two, not for both in turn.
        # Credentials a URL carries go to the worker in the task, never
        # into the journal or to those who may read its results.
        recorded = self.journal.record(
            task_id, "PENDING", app=app.name, queue=queue.name, method=method,
            url=mask_passwords(url) if "@" in url else url,
        )
        try:
            await link.publish(queue, task_id, headers, payload, self.publish_timeout)
        except PublishFailed as e:
            try:
                await recorded
                await self.journal.record(
                    task_id, "FAILURE",
                    result={"exc_type": "PublishFailed", "exc_message": [e.message],
                            "exc_module": "cyme.results"},
                )
            except JournalClosed:
                # The branch stopped meanwhile, closing its broker links
                # under the publish: whether the task is queued is unknown.
                raise Unavailable(
                    f"the branch stopped before the broker confirmed task {task_id}",
                    uuid=task_id,
                ) from None
            raise
        await recorded
        return task_id

    def get(self, task_id):
        return self.journal.get(task_id)
