"""The sealed bus between real branches on the real RabbitMQ.

Each test starts real ``twistd -n cyme-branch`` processes (the helpers of
L{tests.integration}) in a cluster of its own, on the run's virtual host;
the attacker is this test, with the broker's own credentials (guest), as
anyone who may publish on that virtual host.  Skipped, with the reason,
only when nothing listens on 127.0.0.1:5672.
"""

import json
import os
import stat
import uuid

import treq
from twisted.internet import defer, reactor

from cyme.amqp import AMQPClientService, backoff_policy
from cyme.cluster.placement import coordinator
from cyme.cluster.seal import FernetSeal
from tests.cluster import new_key
from tests.integration import IntegrationTestCase, sleep
from tests.test_daemon import deferred
from tests.vhosts import broker_url, run_vhost

PASSWORD = "s3cret-pw-" + uuid.uuid4().hex[:8]


class BusTestCase(IntegrationTestCase):
    timeout = 90
    http_timeout = 10

    async def wait_branches(self, node, ids, timeout=15):
        return await self.poll_get(
            node, "/branches/", lambda code, body: (code, body) == (200, sorted(ids)),
            timeout, f"GET /branches/ on {node.id} is {sorted(ids)}",
        )

    async def dropped(self, node):
        code, info = await self.get(node, f"/branches/{node.id}/")
        self.assertEqual(code, 200, info)
        return info["bus"]["dropped"]

    async def broker_client(self, vhost="cyme-test"):
        """A connection to the branches' virtual host (of C{vhost}, the prefix), as
        guest: a channel on it."""
        service = AMQPClientService(
            broker_url(run_vhost(vhost)), reactor=reactor,
            connection_name=f"cyme-test-attacker-{uuid.uuid4().hex[:6]}",
            retry_policy=backoff_policy(initial=0.05, cap=0.5), close_timeout=2,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return await service.open_channel(timeout=5)

    async def tap(self, channel, ids):
        """A queue of the test's, bound to the bus exchanges: the bodies it sees."""
        seen = []
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
        await channel.queue_bind(declared.queue, f"{self.cluster}.bus", routing_key="")
        for branch_id in ids:
            await channel.queue_bind(declared.queue, f"{self.cluster}.bus.direct",
                                     routing_key=branch_id)
        await channel.consume(declared.queue, lambda m: seen.append(m.body), no_ack=True)
        return seen


class SealedBusTests(BusTestCase):
    @deferred
    async def test_what_anyone_on_the_broker_publishes_changes_nothing(self):
        """
        On a keyed cluster, a forged, a tampered, a replayed and an unsealed
        envelope published straight to the bus exchanges change nothing, and
        are counted; a queue bound to the bus sees no broker password.
        """
        a = await self.spawn_branch("a")
        b = await self.spawn_branch("b")
        for node in (a, b):
            await self.wait_ping(node.process, node.port)
        for node in (a, b):
            await self.wait_branches(node, ["a", "b"])
        channel = await self.broker_client()
        seen = await self.tap(channel, ["a", "b"])

        # What a branch says on the bus is sealed: the app's password too.
        await self.ok("PUT", a, "/foo/", expected=(201,),
                      data={"hostname": "mq", "userid": "u", "password": PASSWORD})
        await self.poll_get(b, "/", lambda code, body: body == ["foo"], 10, "foo on b")
        await self.poll(lambda: len(seen) >= 4 or None, 10, "bus traffic seen")
        for body in seen:
            self.assertNotIn(PASSWORD.encode(), body)
            envelope = json.loads(body)
            self.assertEqual(sorted(envelope), ["sealed", "v"])
        self.assertEqual((await self.get(a, "/foo/"))[1]["broker"]["password"], PASSWORD)

        before = {n.id: await self.dropped(n) for n in (a, b)}
        evil_app = {"name": "evil", "broker": {"hostname": "attacker"}}
        merge = {"v": 3, "type": "request", "from": "a", "ticket": "t",
                 "method": "replica.merge",
                 "args": {"replica": {"apps": {"evil": evil_app},
                                      "versions": {"app/evil": [2**52, "zz"]}}}}
        put = {"v": 3, "type": "request", "from": "a", "ticket": "t2", "method": "instance.op",
               "args": {"op": "put_instance", "args": ["foo", "evil", {}]}}
        token = json.loads(seen[-1])["sealed"]
        tampered = token[:50] + ("A" if token[50] != "A" else "B") + token[51:]
        stranger = FernetSeal([new_key()], reactor)
        attacks = [
            # Unsealed, as the bus was before: a merge, a create, a beat.
            json.dumps(merge).encode(), json.dumps(put).encode(),
            json.dumps({"v": 3, "type": "beat", "from": "mallory", "url": "http://x/"}).encode(),
            json.dumps({**merge, "v": 1}).encode(),
            # Sealed with another key (forged), and altered (tampered).
            stranger.close(merge), stranger.close(put),
            json.dumps({"v": 3, "sealed": tampered}).encode(),
            # Replayed: everything the branches said so far, the merge of foo included.
            *seen,
        ]
        for body in attacks:
            await channel.publish(f"{self.cluster}.bus", "", body)
            await channel.publish(f"{self.cluster}.bus.direct", "b", body)
        await sleep(1.5)

        for node in (a, b):
            self.assertEqual(await self.get(node, "/"), (200, ["foo"]))
            self.assertEqual(await self.get(node, "/foo/instances/"), (200, []))
            self.assertEqual(await self.get(node, "/branches/"), (200, ["a", "b"]))
            code, _ = await self.get(node, "/branches/mallory/")
            self.assertEqual(code, 404)
            dropped = await self.dropped(node)
            for reason, least in (("unsealed", 4), ("unopened", 3), ("replayed", 1)):
                self.assertGreaterEqual(dropped[reason] - before[node.id][reason], least,
                                        f"{reason} on {node.id}: {dropped}")
            metrics = await self.metrics(node)
            self.assertIn('cyme_bus_messages_dropped_total{reason="unsealed"} '
                          f'{float(dropped["unsealed"])}\n', metrics)
        for node in (a, b):
            output = node.process.output
            self.assertEqual(output.count("dropped an unsealed bus message"), 1, output)
            self.assertNotIn(PASSWORD, output)
            self.assertNotIn("Traceback", output)
        for node in (a, b):
            await self.stop(node.process)

    @deferred
    async def test_a_request_replayed_to_another_branch_or_after_a_restart_changes_nothing(self):
        """
        A broker user copies what a sends b (a queue bound under b's id):
        the request to add a token, which b decides.  Once the token is
        revoked, the copies published within the window bring it back
        nowhere: c, which holds the key too, drops them as misdirected; b,
        restarted meanwhile (its memory of ids gone), as stale.
        """
        ids = ["a", "b", "c"]
        nodes = [await self.spawn_branch(i) for i in ids]
        for node in nodes:
            await self.wait_ping(node.process, node.port)
        for node in nodes:
            await self.wait_branches(node, ids)
        a, b, c = nodes
        channel = await self.broker_client()
        seen = await self.tap(channel, ["b"])
        name = next(n for n in (f"ci{i}" for i in range(100)) if coordinator(n, ids) == "b")

        await self.ok("POST", a, "/tokens/", expected=(201,),
                      data={"name": name, "scope": "read"})
        for node in nodes:
            await self.poll_get(node, "/tokens/", lambda code, body: len(body) == 1, 10,
                                f"token {name} on {node.id}")
        await self.ok("DELETE", a, f"/tokens/{name}/")
        for node in nodes:
            await self.poll_get(node, "/tokens/", lambda code, body: body == [], 10,
                                f"token {name} revoked on {node.id}")
        before = await self.dropped(c)
        for body in list(seen):
            await channel.publish(f"{self.cluster}.bus.direct", "c", body)
        await sleep(1.5)

        for node in nodes:
            self.assertEqual(await self.get(node, "/tokens/"), (200, []))
        dropped = await self.dropped(c)
        # At least the request and a probe of b's; the broadcasts c heard
        # already are replays.
        self.assertGreaterEqual(dropped["misdirected"] - before["misdirected"], 2, dropped)

        await self.stop(b.process)
        b = nodes[1] = await self.spawn_branch("b", root=b.root, port=b.port)
        await self.wait_ping(b.process, b.port)
        for node in nodes:
            await self.wait_branches(node, ids)
        for body in list(seen):
            await channel.publish(f"{self.cluster}.bus.direct", "b", body)
        await sleep(1.5)
        for node in nodes:
            self.assertEqual(await self.get(node, "/tokens/"), (200, []))
        # The request, and the merges a broadcast before the restart.
        self.assertGreaterEqual((await self.dropped(b))["stale"], 1)
        for node in nodes:
            self.assertNotIn("Traceback", node.process.output)
        await defer.gatherResults([defer.ensureDeferred(self.stop(n.process)) for n in nodes])

    async def metrics(self, node):
        """The text of C{/metrics} (not JSON)."""
        response = await treq.get(node.url("/metrics"), pool=self.pool, timeout=5)
        self.assertEqual(response.code, 200)
        return (await treq.content(response)).decode()


class DefaultKeyTests(BusTestCase):
    @deferred
    async def test_one_users_branches_form_a_cluster_and_a_strangers_does_not_join(self):
        """
        Two branches started with the same home and no key option form a
        cluster (the key made at the first start, 0600); a branch started
        with another home, so another key, on the same broker and cluster
        name, sees neither and is seen by neither.
        """
        homes = {"mine": self.path("home-mine"), "theirs": self.path("home-theirs")}
        for home in homes.values():
            os.makedirs(home)

        def env(who):
            return {"HOME": homes[who], "XDG_CONFIG_HOME": None}

        a = await self.spawn_branch("a", env=env("mine"))
        b = await self.spawn_branch("b", env=env("mine"))
        for node in (a, b):
            await self.wait_ping(node.process, node.port)
        for node in (a, b):
            await self.wait_branches(node, ["a", "b"])
        # The stranger joins a cluster already up: a and b hear its hello
        # (alone, it says nothing more: it has nobody to probe).
        c = await self.spawn_branch("c", env=env("theirs"))
        await self.wait_ping(c.process, c.port)
        await self.ok("PUT", a, "/foo/", expected=(201,), data={"password": PASSWORD})
        await self.poll_get(b, "/", lambda code, body: body == ["foo"], 10, "foo on b")
        # Seconds later, the stranger is still alone, and knows nothing.
        await sleep(6.5)
        self.assertEqual(await self.get(c, "/branches/"), (200, ["c"]))
        self.assertEqual(await self.get(c, "/"), (200, []))
        for node in (a, b):
            self.assertEqual(await self.get(node, "/branches/"), (200, ["a", "b"]))
            self.assertEqual((await self.get(node, "/branches/c/"))[0], 404)
        self.assertGreater((await self.dropped(c))["unopened"], 0)
        self.assertGreater((await self.dropped(a))["unopened"], 0)

        keys = {}
        for who, home in homes.items():
            path = os.path.join(home, ".cyme", "cluster.key")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
            with open(path, "rb") as f:
                keys[who] = f.read()
        self.assertNotEqual(keys["mine"], keys["theirs"])
        self.assertIn(f"made the cluster key {homes['mine']}/.cyme/cluster.key",
                      a.process.output + b.process.output)
        for node in (a, b, c):
            await self.stop(node.process)

    @deferred
    async def test_branches_given_the_same_key_file_join_wherever_their_homes(self):
        key = self.path("shared.key")
        from cyme.cluster.keys import new_key_file

        new_key_file(key)
        a = await self.spawn_branch("a", "--cluster-key-file", key,
                                    env={"HOME": self.path("h1"), "XDG_CONFIG_HOME": None})
        b = await self.spawn_branch("b", "--cluster-key-file", key,
                                    env={"HOME": self.path("h2"), "XDG_CONFIG_HOME": None})
        for node in (a, b):
            await self.wait_ping(node.process, node.port)
        for node in (a, b):
            await self.wait_branches(node, ["a", "b"])
        self.assertFalse(os.path.exists(self.path("h1")))
        await defer.gatherResults([defer.ensureDeferred(self.stop(n.process)) for n in (a, b)])


class BusBrokerTests(BusTestCase):
    async def has_exchange(self, vhost_prefix, exchange):
        """Whether C{exchange} exists on the virtual host of C{vhost_prefix}."""
        channel = await self.broker_client(vhost_prefix)
        try:
            await channel.exchange_declare(exchange, "fanout", passive=True, timeout=5)
        except Exception:  # the broker's 404 closes the channel
            return False
        return True

    @deferred
    async def test_the_bus_on_a_virtual_host_and_user_of_its_own(self):
        """
        Two branches whose bus is on a virtual host of its own, as a user who
        may use that one alone (given in the environment, as a password on a
        command line is for everyone to see): they form a cluster and
        replicate; the bus's exchanges are there, none on the apps' broker,
        which is still the one of C{-b}.
        """
        vhost = run_vhost("cyme-test-bus")
        user, password = await self.broker_user(vhost, "cymebus")
        env = {"CYME_BUS_BROKER_URL": f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"}
        a = await self.spawn_branch("a", env=env)
        b = await self.spawn_branch("b", env=env)
        for node in (a, b):
            await self.wait_ping(node.process, node.port)
        for node in (a, b):
            await self.wait_branches(node, ["a", "b"])
        await self.ok("PUT", a, "/foo/", expected=(201,))
        await self.poll_get(b, "/", lambda code, body: body == ["foo"], 10, "foo on b")
        broker = (await self.get(b, "/foo/"))[1]["broker"]
        self.assertEqual(broker["virtual_host"], run_vhost("cyme-test"))
        self.assertTrue(await self.has_exchange("cyme-test-bus", f"{self.cluster}.bus"))
        self.assertFalse(await self.has_exchange("cyme-test", f"{self.cluster}.bus"))
        for node in (a, b):
            self.assertNotIn(password, node.process.output)
            self.assertNotIn("Traceback", node.process.output)
        await defer.gatherResults([defer.ensureDeferred(self.stop(n.process)) for n in (a, b)])


class KeyRotationTests(BusTestCase):
    @deferred
    async def test_a_key_rotates_branch_by_branch_without_the_two_losing_each_other(self):
        """
        The README's rotation on real branches, one restart at a time: a
        accepts the new key while b has only the old one; b seals with the
        new key (the old one still opened) while a still seals with the old
        one; a then has the new key alone.  At each step the two list each
        other and a write on either reaches the other, and neither ever drops
        a message of the other as unopened.
        """
        from cyme.cluster.keys import new_key_file

        old, new = self.path("old.key"), self.path("new.key")
        new_key_file(old)
        new_key_file(new)
        a = await self.spawn_branch("a", "--cluster-key-file", old,
                                    "--previous-cluster-key-file", new)
        b = await self.spawn_branch("b", "--cluster-key-file", old)
        for node in (a, b):
            await self.wait_ping(node.process, node.port)
        nodes = {"a": a, "b": b}
        steps = [("b", ["--cluster-key-file", new, "--previous-cluster-key-file", old]),
                 ("a", ["--cluster-key-file", new])]
        for step, (restarted, options) in enumerate([(None, None), *steps]):
            if restarted is not None:
                node = nodes[restarted]
                await self.stop(node.process)
                nodes[restarted] = await self.spawn_branch(
                    restarted, *options, root=node.root, port=node.port)
                await self.wait_ping(nodes[restarted].process, node.port)
            for node in nodes.values():
                await self.wait_branches(node, ["a", "b"])
            for writer, reader in (("a", "b"), ("b", "a")):
                app = f"app{step}{writer}"
                await self.ok("PUT", nodes[writer], f"/{app}/", expected=(201,))
                await self.poll_get(nodes[reader], f"/{app}/", lambda code, body: code == 200,
                                    10, f"{app} from {writer} on {reader}")
        for node in nodes.values():
            self.assertEqual((await self.dropped(node))["unopened"], 0, node.id)
        await defer.gatherResults([defer.ensureDeferred(self.stop(n.process))
                                   for n in nodes.values()])
