"""API tokens across three branches on a memory bus: a token made on one
branch works on every branch at once, a revoked or expired one stops
everywhere, a branch that was away during a revocation learns it when it
returns, and so do the others of what was made or revoked on its root
while it did not run."""

import os

from twisted.internet.task import Clock
from twisted.internet import defer

from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state.store import JSONFileStore
from tests.operations.test_cluster import IDS, Branch, ClusterTestCase

REMOTE = "203.0.113.7"


class TokenTestCase(ClusterTestCase):
    def make_branches(self):
        # Every branch's wall clock is the test's: expiry and versions move with it.
        return {i: self.branch(i) for i in IDS}

    def branch(self, branch_id, store=None):
        return Branch(branch_id, self.network, self.clock, seal=self.make_seal(branch_id),
                      store=store, now=self.clock.seconds)

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


class ClusterTokenTests(TokenTestCase):
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


class ExpiryTests(TokenTestCase):
    def test_an_expired_token_stops_on_every_branch(self):
        made = self.request("b1", "POST", "/tokens/",
                            data={"name": "ci", "scope": "read", "expires": "60"})
        self.assertEqual(made.code, 201, made.body)
        secret = made.json["token"]
        self.wait(59.5)
        for branch in IDS:
            self.assertEqual(self.remote(branch, "GET", "/", secret).code, 200, branch)
        self.wait(0.5)  # its expiry, on every branch's clock
        for branch in IDS:
            refused = self.remote(branch, "GET", "/", secret)
            self.assertEqual(refused.code, 401, branch)
            self.assertEqual(self.remote(branch, "GET", "/foo/", secret).code, 401, branch)


class IdleRootTests(TokenTestCase):
    """
    C{cyme-branch token} on the root of a branch that does not run edits its
    state file (L{LocalOperations} on a L{JSONFileStore}, as
    L{cyme.script} does); the other branches learn it when that branch
    starts again, by the replicas' catch-up, and a name made both there and
    in the cluster ends as one token, the later one, on every branch.
    """

    def setUp(self):
        self.state = os.path.abspath(self.mktemp())
        super().setUp()

    def make_branches(self):
        return {i: self.branch(i, JSONFileStore(self.state) if i == "b3" else None)
                for i in IDS}

    def stop_b3(self):
        self.branches["b3"].bus.stopService()
        self.settle()
        self.assertEqual(self.request("b1", "GET", "/branches/").json, ["b1", "b2"])

    def offline(self, method, *args):
        """C{method} of the operations on b3's idle root: its answer."""
        ops = LocalOperations(JSONFileStore(self.state), branch_id="b3",
                              now=self.clock.seconds)
        return self.successResultOf(defer.ensureDeferred(getattr(ops, method)(*args)))

    def start_b3(self):
        branch = self.branch("b3", JSONFileStore(self.state))
        self.branches["b3"] = branch
        branch.bus.startService()
        self.addCleanup(branch.bus.stopService)
        self.wait(3)

    def works(self, secret):
        return {b: self.remote(b, "GET", "/", secret).code for b in IDS}

    def test_made_on_an_idle_root_works_everywhere_once_it_starts(self):
        self.stop_b3()
        self.wait(1)
        made, _ = self.offline("create_token", {"name": "late", "scope": "read"})
        self.assertEqual(self.remote("b1", "GET", "/", made["token"]).code, 401)
        self.start_b3()
        self.assertEqual(self.works(made["token"]), dict.fromkeys(IDS, 200))

    def test_revoked_on_an_idle_root_stops_everywhere_once_it_starts(self):
        secret = self.make("b1")
        self.stop_b3()
        self.wait(1)
        self.offline("revoke_token", "ci")
        self.assertEqual(self.remote("b1", "GET", "/", secret).code, 200)  # not yet
        self.start_b3()
        self.assertEqual(self.works(secret), dict.fromkeys(IDS, 401))
        for branch in IDS:
            self.assertEqual(self.branches[branch].store.tokens(), [], branch)

    def test_one_name_made_offline_and_in_the_cluster_ends_as_the_later_one(self):
        for offline_later in (False, True):
            with self.subTest(offline_later=offline_later):
                self.stop_b3()
                self.wait(1)
                if offline_later:
                    cluster = self.make("b1")
                    self.wait(1)
                    offline, _ = self.offline("create_token", {"name": "ci", "scope": "read"})
                    later, earlier = offline["token"], cluster
                else:
                    offline, _ = self.offline("create_token", {"name": "ci", "scope": "read"})
                    self.wait(1)
                    later, earlier = self.make("b1"), offline["token"]
                self.start_b3()
                self.assertEqual(self.works(later), dict.fromkeys(IDS, 200))
                self.assertEqual(self.works(earlier), dict.fromkeys(IDS, 401))
                self.assertEqual(self.request("b1", "DELETE", "/tokens/ci/").code, 200)
