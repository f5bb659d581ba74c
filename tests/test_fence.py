"""The fence's rules (L{cyme.fence}): which address a queued URL may reach.

Pure functions: the requests themselves, against a real server that must
not be hit, are in L{tests.tasks.test_webhook_fence}.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from cyme.fence import Both, Fence, Refused, literal_address, parse_entry, refused_by_default


class LiteralTests(SynchronousTestCase):
    def test_every_numeric_form_of_loopback(self):
        loopback = ipaddress.ip_address("127.0.0.1")
        for host in ("127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001",
                     "0x7f.1", "0x7F.0.0.1", "017700000001", "0177.0.0.1", "0177.1",
                     "127.0.0.1."):
            self.assertEqual(literal_address(host), loopback, host)

    def test_ipv6_forms(self):
        self.assertEqual(literal_address("[::1]"), ipaddress.ip_address("::1"))
        self.assertEqual(literal_address("::ffff:127.0.0.1"), ipaddress.ip_address("::ffff:7f00:1"))
        # A zone, as a URL writes it (%25) or not, does not change the address.
        self.assertEqual(literal_address("fe80::1%25eth0"), ipaddress.ip_address("fe80::1"))
        self.assertEqual(literal_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))

    def test_names_are_not_literals(self):
        for host in ("localhost", "1password.com", "123.example", "999.1.1.1", "1.2.3.4.5",
                     "0x", "08.1", "example.com", "::zz"):
            self.assertIsNone(literal_address(host), host)


class DefaultPolicyTests(SynchronousTestCase):
    def test_refused_by_default(self):
        for address, rule in [
            ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
            ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
            ("fe80::1", "link-local"), ("fd00:ec2::254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
            ("224.0.0.1", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved"),
            # Judged by the IPv4 address they carry.
            ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"), ("2002:7f00:1::", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ]:
            found = refused_by_default(ipaddress.ip_address(address))
            self.assertIsNotNone(found, address)
            self.assertIn(rule, found, address)

    def test_allowed_by_default(self):
        for address in ("93.184.216.34", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                        "100.64.0.1", "fd12::1", "2001:db8::1", "::ffff:10.0.0.1", "192.0.2.2"):
            self.assertIsNone(refused_by_default(ipaddress.ip_address(address)), address)

    def test_private_refused_when_asked(self):
        for address in ("10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                        "100.64.0.1", "fd12::1", "::ffff:192.168.0.1"):
            self.assertIn("private", refused_by_default(ipaddress.ip_address(address), True),
                          address)
        for address in ("93.184.216.34", "172.32.0.1", "2001:db8::1"):
            self.assertIsNone(refused_by_default(ipaddress.ip_address(address), True), address)


class FenceTests(SynchronousTestCase):
    def assertRefused(self, fence, host, port, address, *fragments):
        error = self.assertRaises(Refused, fence.check, host, port, address)
        self.assertEqual(error.host, host)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error

    def test_default_policy_names_host_address_and_rule(self):
        error = self.assertRefused(Fence(), "localhost", 80, "127.0.0.1",
                                   "host localhost (at 127.0.0.1) refused (a loopback address;",
                                   "allowed_hosts", "--webhook-allow")
        self.assertEqual(str(error.address), "127.0.0.1")
        self.assertRefused(Fence(), "2130706433", 80, "127.0.0.1",
                           "host 2130706433 (at 127.0.0.1) refused")
        self.assertRefused(Fence(), "::ffff:7f00:1", 80, "::ffff:7f00:1",
                           "host ::ffff:7f00:1 (at 127.0.0.1) refused")
        self.assertRefused(Fence(), "127.0.0.1", 80, "127.0.0.1", "host 127.0.0.1 refused")
        Fence().check("example.com", 80, "93.184.216.34")
        Fence().check("intranet", 80, "10.0.0.5")
        self.assertRefused(Fence(deny_private=True), "intranet", 80, "10.0.0.5", "private")
        # Where the operator opened it, the app's list is what is missing.
        self.assertRefused(Fence(opened=["127.0.0.1"]), "127.0.0.1", 80, "127.0.0.1",
                           "(a loopback address; list it in the app's allowed_hosts to allow it)")
        # The operator's opening alone allows nothing: the app lists nothing.
        self.assertRefused(Fence(opened=["127.0.0.1"]), "127.0.0.1", 80, "127.0.0.1", "loopback")

    def test_a_listed_address_or_network_is_allowed_inside_a_range_the_operator_opened(self):
        listed = ["127.0.0.1", "10.0.0.0/8", "[::1]:8080"]
        fence = Fence(listed, opened=["127.0.0.0/8", "::1"])
        fence.check("127.0.0.1", 80, "127.0.0.1")
        fence.check("2130706433", 80, "127.0.0.1")  # the same address
        fence.check("::ffff:127.0.0.1", 80, "::ffff:127.0.0.1")
        fence.check("10.9.9.9", 80, "10.9.9.9")  # private: not refused by default
        fence.check("::1", 8080, "::1")
        self.assertRefused(fence, "::1", 80, "::1", "not in the app's allowed_hosts")
        self.assertRefused(fence, "127.0.0.2", 80, "127.0.0.2", "loopback", "not in the app's")
        # Addresses match hosts written as addresses; names need entries of their own.
        self.assertRefused(fence, "localhost", 80, "127.0.0.1", "host localhost (at 127.0.0.1)")
        self.assertRefused(fence, "intranet", 80, "10.9.9.9", "not in the app's allowed_hosts")
        # Only what it lists: an address the default would allow is refused.
        self.assertRefused(fence, "93.184.216.34", 80, "93.184.216.34", "not in the app's")

    def test_the_app_alone_cannot_open_a_refused_range(self):
        """A write token sets allowed_hosts: without the operator's
        --webhook-allow, listing loopback, the metadata address or the
        branch's own port opens nothing."""
        fence = Fence(["127.0.0.1:8000", "169.254.169.254", "[::1]", "localhost", "0.0.0.0/0"])
        for host, address, rule in [
            ("127.0.0.1", "127.0.0.1", "a loopback address, not opened by the branch "
                                       "(--webhook-allow)"),
            ("169.254.169.254", "169.254.169.254", "a link-local address"),
            ("::1", "::1", "a loopback address"), ("localhost", "127.0.0.1", "loopback"),
            ("2130706433", "127.0.0.1", "loopback"), ("224.0.0.1", "224.0.0.1", "multicast"),
        ]:
            error = self.assertRefused(fence, host, 8000, address, rule, "--webhook-allow")
            self.assertIn("not opened by the branch", error.rule)
        fence.check("93.184.216.34", 80, "93.184.216.34")  # within 0.0.0.0/0, not refused
        # The operator's port, network or name bounds what the app opens.
        fence = Fence(["127.0.0.1", "localhost"], opened=["127.0.0.1:8080", "localhost:9000"])
        fence.check("127.0.0.1", 8080, "127.0.0.1")
        fence.check("localhost", 9000, "127.0.0.1")
        fence.check("localhost", 9000, "::1")  # by name: whatever it resolves to
        self.assertRefused(fence, "127.0.0.1", 8000, "127.0.0.1", "not opened by the branch")
        self.assertRefused(fence, "localhost", 8000, "127.0.0.1", "not opened by the branch")
        # A name the operator opened is no address it opened.
        self.assertRefused(Fence(["127.0.0.1"], opened=["localhost"]), "127.0.0.1", 80,
                           "127.0.0.1", "not opened by the branch")
        self.assertRefused(Fence(["*.example.com", "127.0.0.0/8"], opened=["*.example.com"]),
                           "a.example.com", 80, "127.0.0.1", "not opened by the branch")

    def test_deny_private_yields_to_the_list_where_the_operator_opened_it(self):
        Fence(["10.0.0.0/8"], deny_private=True, opened=["10.0.0.0/8"]).check(
            "10.0.0.5", 80, "10.0.0.5")
        Fence(["intranet"], deny_private=True, opened=["intranet"]).check(
            "intranet", 80, "10.0.0.5")
        self.assertRefused(Fence(["10.0.0.0/8"], deny_private=True), "10.0.0.5", 80,
                           "10.0.0.5", "a private address, not opened by the branch")

    def test_a_listed_name_is_allowed_whatever_it_resolves_to(self):
        fence = Fence(["localhost", "api.example.com:8443"],
                      opened=["localhost", "169.254.0.0/16"])
        fence.check("localhost", 80, "127.0.0.1")
        fence.check("LOCALHOST.", 80, "::1")
        fence.check("api.example.com", 8443, "169.254.169.254")
        self.assertRefused(fence, "api.example.com", 443, "93.184.216.34")
        self.assertRefused(fence, "127.0.0.1", 80, "127.0.0.1")
        # Inside a refused range, only where the operator opened it.
        self.assertRefused(Fence(["localhost"]), "localhost", 80, "127.0.0.1",
                           "not opened by the branch")
        Fence(["api.example.com"]).check("api.example.com", 80, "93.184.216.34")

    def test_a_wildcard_does_not_open_refused_ranges(self):
        fence = Fence(["*.example.com"])
        fence.check("a.example.com", 80, "93.184.216.34")
        fence.check("a.b.example.com", 443, "10.0.0.1")
        self.assertRefused(fence, "a.example.com", 80, "127.0.0.1", "loopback")
        self.assertRefused(Fence(["*.example.com"], opened=["127.0.0.1"]), "a.example.com", 80,
                           "127.0.0.1", "loopback")
        self.assertRefused(Fence(["*.example.com"], deny_private=True), "a.example.com", 80,
                           "10.0.0.1", "private")
        self.assertRefused(fence, "example.com", 80, "93.184.216.34")
        self.assertRefused(fence, "badexample.com", 80, "93.184.216.34")
        # A network listed beside it opens that range, where the operator did.
        Fence(["*.example.com", "127.0.0.0/8"], opened=["127.0.0.1"]).check(
            "a.example.com", 80, "127.0.0.1")
        self.assertRefused(Fence(["*.example.com", "127.0.0.0/8"]), "a.example.com", 80,
                           "127.0.0.1", "not opened by the branch")

    def test_the_name_alone_settles_what_it_can(self):
        self.assertTrue(Fence().needs_addresses("example.com", 80))
        self.assertFalse(Fence(["example.com"], opened=["example.com"]).needs_addresses(
            "example.com", 80))
        self.assertFalse(Fence(["example.com", "*.com"], opened=["example.com"]).needs_addresses(
            "example.com", 80))
        # Listed by the app alone, it may resolve into a refused range,
        # which only the operator opens: its addresses decide.
        self.assertTrue(Fence(["example.com"]).needs_addresses("example.com", 80))
        self.assertTrue(Fence(["example.com"], opened=["*.com"]).needs_addresses(
            "example.com", 80))
        self.assertTrue(Fence(["*.example.com"]).needs_addresses("a.example.com", 80))
        error = self.assertRaises(Refused, Fence(["example.com", "10.0.0.0/8"]).needs_addresses,
                                  "evil.com", 80)
        self.assertEqual(str(error), "host evil.com refused (not in the app's allowed_hosts "
                                     "(example.com, 10.0.0.0/8))")
        self.assertRaises(Refused, Fence(["example.com:8080"]).needs_addresses, "example.com", 80)

    def test_a_long_list_is_named_by_its_start(self):
        fence = Fence([f"h{n}.example.com" for n in range(300)])
        error = self.assertRaises(Refused, fence.check, "10.0.0.1", 80, "10.0.0.1")
        self.assertEqual(error.rule, "not in the app's allowed_hosts (h0.example.com, h1.example.com, "
                                     "h2.example.com, h3.example.com, h4.example.com, ... 300 entries)")

    def test_one_refused_address_refuses_the_name(self):
        fence = Fence()
        self.assertEqual(fence.check_all("x", 80, ["93.184.216.34"]), ["93.184.216.34"])
        self.assertRaises(Refused, fence.check_all, "x", 80, ["93.184.216.34", "127.0.0.1"])
        self.assertIn("no address", str(self.assertRaises(Refused, fence.check_all, "x", 80, [])))

    def test_an_entry_this_version_cannot_read_matches_nothing(self):
        """An older version stored C{[1:2]}: the list keeps its other
        entries, and is never taken for an empty one (the default policy)."""
        fence = Fence(["[1:2]", "api.example.com"])
        fence.check("api.example.com", 80, "93.184.216.34")
        self.assertRefused(fence, "93.184.216.34", 80, "93.184.216.34",
                           "not in the app's allowed_hosts ([1:2], api.example.com)")
        for entries in (["[1:2]"], ["[:]"], ["[...]"], [None], [3]):
            fence = Fence(entries, opened=["0.0.0.0/0", "::/0"])
            for address in ("93.184.216.34", "10.0.0.1", "127.0.0.1", "::1", "::"):
                self.assertRefused(fence, address, 80, address, "not in the app's allowed_hosts")
            self.assertRaises(Refused, fence.needs_addresses, "example.com", 80)


class BothTests(SynchronousTestCase):
    """A worker's own fence narrowed by a task's: each hop needs both."""

    def test_a_task_narrows_and_never_widens(self):
        own = Fence(["api.example.com", "127.0.0.1:8080"], opened=["127.0.0.1:8080"])
        narrowed = Both(own, Fence(["api.example.com"], opened=["127.0.0.1:8080"]))
        narrowed.check("api.example.com", 443, "93.184.216.34")
        self.assertRaises(Refused, narrowed.check, "127.0.0.1", 8080, "127.0.0.1")
        widened = Both(Fence(), Fence(["127.0.0.1", "0.0.0.0/0"], opened=["0.0.0.0/0"]))
        for address in ("127.0.0.1", "169.254.169.254"):
            self.assertRaises(Refused, widened.check, address, 80, address)
        self.assertRaises(Refused, widened.check_all, "localhost", 80, ["127.0.0.1"])
        self.assertEqual(widened.check_all("93.184.216.34", 80, ["93.184.216.34"]),
                         ["93.184.216.34"])
        # The name alone: refused by either, looked up if either needs it.
        self.assertRaises(Refused, Both(own, Fence(["other.example.com"])).needs_addresses,
                          "api.example.com", 443)
        self.assertTrue(Both(Fence(["a.test"], opened=["a.test"]), Fence()).needs_addresses(
            "a.test", 80))


class EntryTests(SynchronousTestCase):
    def test_valid_entries(self):
        for text in ("example.com", "EXAMPLE.com", "*.example.com", "example.com:8080",
                     "127.0.0.1", "127.0.0.1:8080", "::1", "[::1]", "[::1]:8080", "10.0.0.0/8",
                     "fd00::/8", "192.168.1.10/24", "localhost", "my_host", "2130706433"):
            parse_entry(text)

    def test_invalid_entries(self):
        for text in ("", " ", "http://example.com", "example.com/path", "10.0.0.0/33",
                     "example.com:http", "example.com:123456", "[::1", "exa mple.com",
                     "*.", "a:b:c", None, 3, "-x.com"):
            self.assertRaises(ValueError, parse_entry, text)
