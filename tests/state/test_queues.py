"""What a queue declaration may say (cyme.state.queues): reserved names, kombu's options."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.errors import BadRequest
from cyme.state import params
from cyme.state.models import App, Instance, Queue
from cyme.supervision.workers import worker_command


class ClusterNameTests(SynchronousTestCase):
    def test_a_named_clusters_bus_is_reserved(self):
        for name in ("prod.bus", "prod.branch.b1"):
            with self.assertRaises(BadRequest) as caught:
                params.queue("q", {"exchange": name}, cluster="prod")
            self.assertEqual(caught.exception.field, "exchange")
            with self.assertRaises(BadRequest):
                params.queue(name, {}, cluster="prod")
        # Another cluster's name is an app's to use, the default's never.
        self.assertEqual(params.queue("q", {"exchange": "prod.bus"}).exchange, "prod.bus")
        with self.assertRaises(BadRequest):
            params.queue("q", {"exchange": "cyme.bus"}, cluster="prod")


class OlderRecordTests(SynchronousTestCase):
    """A state file of an older version may hold what the API now refuses."""

    def command(self, queue):
        return worker_command(Instance("w1", "foo", queues=(queue.name,)), App("foo"), [queue],
                              self.mktemp(), "h", "/py")

    def test_a_bindings_option_fails_its_worker(self):
        queue = Queue("q", options={"bindings": [{"exchange": "cyme.bus", "routing_key": "#"}]})
        with self.assertRaises(BadRequest) as caught:
            self.command(queue)
        self.assertIn("bindings", caught.exception.message)

    def test_a_reserved_exchange_fails_its_worker(self):
        with self.assertRaises(BadRequest):
            self.command(Queue("q", exchange="celeryev"))

    def test_a_plain_declaration_starts(self):
        argv, env, spec = self.command(Queue("q", options={"durable": True}))
        self.assertIn("q", env["CYME_WORKER_CONFIG"])
