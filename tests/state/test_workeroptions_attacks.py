"""A setting of the allow-list (cyme.state.workeroptions) that opens what
the operator alone may open: task modules."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.errors import BadRequest
from cyme.state.workeroptions import parse_settings


class PoolRestartTests(SynchronousTestCase):
    """
    C{worker_pool_restarts: true} enables Celery's C{pool_restart} remote
    control command, whose C{modules} argument the worker imports
    (C{import_from_cwd}) with no check against the branch's
    C{--task-module} patterns.  Anyone who can publish on the app's broker
    (its owner, who chose it, with a C{write} token) sends it: seen on a
    real worker, C{{"modules": ["this"]}} imported the module.
    """

    def test_worker_pool_restarts_is_not_allowed(self):
        with self.assertRaises(BadRequest) as caught:
            parse_settings({"worker_pool_restarts": True})
        self.assertEqual(caught.exception.to_json().get("option"), "worker_pool_restarts")
