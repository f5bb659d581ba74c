"""The workers' Celery app (cyme.tasks.worker), configured as the branch configures it.

In process, without a broker: what a worker would run with, from the
``CYME_WORKER_CONFIG`` its branch gives it.
"""

from twisted.trial.unittest import SynchronousTestCase

from cyme.tasks import worker


class ConfigureTests(SynchronousTestCase):
    def setUp(self):
        keys = ("imports", "accept_content", "task_queues", "task_time_limit")
        saved = {k: worker.app.conf.get(k) for k in keys}
        self.addCleanup(worker.app.conf.update, saved)

    def test_json_only_and_no_task_module_by_default(self):
        worker.configure({})
        self.assertEqual(list(worker.app.conf.accept_content), ["json"])
        self.assertEqual(list(worker.app.conf.result_accept_content), ["json"])
        self.assertEqual(worker.app.conf.task_serializer, "json")
        self.assertEqual(tuple(worker.app.conf.imports), ())

    def test_the_branchs_imports_and_settings(self):
        worker.configure({
            "imports": ["myproject.tasks"],
            "extra_config": {"accept_content": ["json", "pickle"], "task_time_limit": 30},
        })
        self.assertEqual(tuple(worker.app.conf.imports), ("myproject.tasks",))
        self.assertEqual(list(worker.app.conf.accept_content), ["json", "pickle"])
        self.assertEqual(worker.app.conf.task_time_limit, 30)
