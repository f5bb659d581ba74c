"""The workers' Celery app (cyme.tasks.worker), configured as the branch configures it.

In process, without a broker: what a worker would run with, from the
``CYME_WORKER_CONFIG`` its branch gives it.
"""

import ssl

from twisted.trial.unittest import SynchronousTestCase

from cyme.tasks import worker


class ConfigureTests(SynchronousTestCase):
    def setUp(self):
        keys = ("imports", "accept_content", "task_queues", "task_time_limit",
                "broker_use_ssl", "cyme_webhook_allowed_hosts", "cyme_webhook_deny_private",
                "cyme_webhook_opened")
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

    def test_the_fence_is_the_branchs(self):
        """The app's allowed_hosts, --webhook-deny-private and --webhook-allow,
        as the branch gives them; without them the default policy, nothing
        opened (a task's own list can only narrow it)."""
        worker.configure({"webhook": {"allowed_hosts": ["api.example.com", "127.0.0.1"],
                                      "deny_private": True, "opened": ["127.0.0.1:8080"]}})
        conf = worker.app.conf
        self.assertEqual((conf.cyme_webhook_allowed_hosts, conf.cyme_webhook_deny_private,
                          conf.cyme_webhook_opened),
                         (("api.example.com", "127.0.0.1"), True, ("127.0.0.1:8080",)))
        worker.configure({"extra_config": {"task_time_limit": 30}})
        self.assertEqual((conf.cyme_webhook_allowed_hosts, conf.cyme_webhook_deny_private,
                          conf.cyme_webhook_opened), ((), False, ()))

    def test_a_tls_broker_is_verified_with_the_branchs_ca_and_host_name(self):
        worker.configure({"broker_tls": {"ca_certs": "/etc/cyme/ca.pem",
                                         "server_hostname": "localhost"}})
        # What the worker's connections (tasks, results, remote control) use.
        connection = worker.app.connection_for_write("amqps://guest:guest@localhost:5671//")
        self.assertEqual(connection.ssl, {"cert_reqs": ssl.CERT_REQUIRED,
                                          "ca_certs": "/etc/cyme/ca.pem",
                                          # Not Celery's 127.0.0.1 for localhost.
                                          "server_hostname": "localhost"})
        # Without a CA bundle, the system's.
        worker.configure({"broker_tls": {"ca_certs": None, "server_hostname": "10.0.0.5"}})
        self.assertEqual(worker.app.conf.broker_use_ssl["ca_certs"], None)
        self.assertEqual(worker.app.conf.broker_use_ssl["cert_reqs"], ssl.CERT_REQUIRED)
