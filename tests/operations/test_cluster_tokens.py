"""API tokens across three branches on a memory bus: a token made on one
branch works on every branch at once, a revoked one stops everywhere, and
a branch that was away during a revocation learns it when it returns."""

from twisted.internet.task import Clock
from twisted.internet import defer

from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from tests.operations.test_cluster import IDS, ClusterTestCase

REMOTE = "203.0.113.7"


class ClusterTokenTests(ClusterTestCase):
    def remote(self, branch, method, path, secret, **kwargs):
        """A request to C{branch} from a remote address, with C{secret}."""
        api = BranchAPI(self.branches[branch].cluster, clock=Clock())
        client = APIClient(api.resource(), peer=REMOTE,
                           headers={"Authorization": [f"Bearer {secret}"]})
        d = client.request(method, path, **kwargs)
        self.settle()
        client.flush()
        return self.successResultOf(d)

    def make(self, branch="b1", scope="read,write"):
        made = self.request(branch, "POST", "/tokens/", data={"name": "ci", "scope": scope})
        self.assertEqual(made.code, 201, made.body)
        self.assertIsNone(made.header("Cyme-Missing-Branches"))
        return made.json["token"]

    def test_made_on_one_branch_works_on_every_branch(self):
        secret = self.make("b1")
        for branch in IDS:
            self.assertEqual(self.remote(branch, "GET", "/", secret).code, 200, branch)
            self.assertEqual(self.request(branch, "GET", "/tokens/").json[0]["name"], "ci")
        self.assertEqual(self.remote("b3", "PUT", "/foo/", secret).code, 201)
        self.assertEqual(self.remote("b2", "GET", "/tokens/", secret).code, 403)

    def test_one_name_made_on_every_branch_at_once_is_made_once(self):
        asked = [self.branches[b].client.request("POST", "/tokens/",
                                                 data={"name": "ci", "scope": "read"})
                 for b in IDS]
        self.settle()
        answers = [self.successResultOf(d) for d in asked]
        self.assertEqual(sorted(a.code for a in answers), [201, 409, 409],
                         [a.body for a in answers])
        made = next(a for a in answers if a.code == 201)
        secret = made.json["token"]
        # Every branch holds the one the caller was given, and it works there.
        for branch in IDS:
            self.assertEqual(self.remote(branch, "GET", "/", secret).code, 200, branch)
        for refused in (a for a in answers if a.code == 409):
            self.assertIn("exists", refused.json["error"])
            self.assertNotIn("token", refused.json)

    def test_a_malformed_token_record_on_the_bus_is_refused(self):
        for args in ({}, {"token": {"name": "x", "scopes": ["root"], "hash": "0" * 64}},
                     {"token": {"name": "../x", "scopes": ["admin"], "hash": "0" * 64}},
                     {"token": [1]}, [1]):
            d = defer.ensureDeferred(self.branches["b1"].bus.call("b2", "token.add", args, 1.0))
            self.settle()
            self.assertEqual(self.failureResultOf(d).value.status, 400, args)
        for branch in IDS:
            self.assertEqual(self.branches[branch].store.tokens(), [])

    def test_revoked_on_one_branch_stops_on_every_branch(self):
        secret = self.make("b1")
        self.assertEqual(self.request("b2", "DELETE", "/tokens/ci/").code, 200)
        for branch in IDS:
            self.assertEqual(self.remote(branch, "GET", "/", secret).code, 401, branch)
            self.assertEqual(self.branches[branch].store.tokens(), [])

    def test_a_branch_away_during_the_revocation_learns_it(self):
        secret = self.make("b1")
        self.network.partition("b3")
        d = self.branches["b1"].client.request("DELETE", "/tokens/ci/")
        self.settle()
        self.wait(5.5)
        self.assertEqual(self.successResultOf(d).header("Cyme-Missing-Branches"), "b3")
        self.assertEqual(self.remote("b3", "GET", "/", secret).code, 200)  # not yet
        self.network.heal("b3")
        self.wait(3)
        self.assertEqual(self.remote("b3", "GET", "/", secret).code, 401)

    def test_passwords_masked_in_answers_from_another_branch(self):
        secret = self.make("b1", scope="read,write")
        broker = "amqp://alice:s3cret-pw@rabbit.example:5672/prod"
        self.request("b1", "PUT", "/foo/", data={"broker": broker})
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b3")
        for branch in IDS:
            for path in ("/foo/", "/foo/instances/w1/", "/instances/w1/"):
                response = self.remote(branch, "GET", path, secret)
                self.assertEqual(response.code, 200, response.body)
                self.assertNotIn(b"s3cret-pw", response.body)
                self.assertIsNone(response.json["broker"]["password"])
            # Loopback callers (every scope) see it.
            shown = self.request(branch, "GET", "/foo/instances/w1/")
            self.assertEqual(shown.json["broker"]["password"], "s3cret-pw")
