"""
The package's layers import one way, down (see cyme/__init__.py): a module
that imported a layer above its own would tie the lower layer to the upper
one, and the next restructure would start by untangling it.

The operator's tools (the client and the ``cyme`` command) stand apart:
they speak to branches over HTTP only, so they import nothing of the
daemon, and the daemon nothing of them.
"""

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import cyme

#: From the top down; a module may import its own layer and those below it.
LAYERS = [
    {"cyme.__main__", "cyme.script", "cyme.tap", "cyme.addresses", "cyme.systemd",
     "cyme.jsonlog", "cyme.branch", "cyme.options"},
    {"cyme.api"},
    {"cyme.operations"},
    {"cyme.cluster"},
    {"cyme.supervision"},
    {"cyme.tasks"},
    {"cyme.state"},
    {"cyme.amqp"},
    {"cyme", "cyme.errors", "cyme.logs", "cyme.backoff", "cyme.gather",
     "cyme.listeners", "cyme.fence", "cyme.metrics"},
]


#: The tools, each with what it may import of cyme: the command is built on
#: the client, the client on HTTP alone (and the package's __version__).
TOOLS = {
    "cyme.cli": {"cyme.cli", "cyme.client", "cyme", "cyme.__version__"},
    "cyme.client": {"cyme.client", "cyme", "cyme.__version__"},
}


def tool_of(module):
    """The tool (a key of L{TOOLS}) C{module} belongs to, or None."""
    for tool in TOOLS:
        if module == tool or module.startswith(tool + "."):
            return tool
    return None


def tool_import_allowed(module, target):
    """Whether C{module}, of a tool, may import C{target}."""
    return any(target == name or (name != "cyme" and target.startswith(name + "."))
               for name in TOOLS[tool_of(module)])


def layer_of(module):
    """The index in L{LAYERS} of C{module}'s layer (a dotted name)."""
    parts = module.split(".")
    for depth in (2, 1):
        prefix = ".".join(parts[:depth])
        for index, layer in enumerate(LAYERS):
            if prefix in layer:
                return index
    raise LookupError(f"{module} is in no layer: add it to LAYERS")


def imports(path, module):
    """The cyme modules that the source at C{path} imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "cyme":
                found.update(f"cyme.{a.name}" for a in node.names)
            else:
                found.add(target)
    return {name for name in found if name == "cyme" or name.startswith("cyme.")}


def modules():
    root = os.path.dirname(os.path.dirname(cyme.__file__))
    for directory, _, files in os.walk(os.path.dirname(cyme.__file__)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                yield path, module.removesuffix(".__init__")


class LayerTests(SynchronousTestCase):
    def test_imports_go_down(self):
        upward = []
        for path, module in modules():
            if tool_of(module):
                continue
            own = layer_of(module)
            for target in sorted(imports(path, module)):
                if target == "cyme.__version__":
                    continue
                if tool_of(target):
                    upward.append(f"{module} imports the tool {target}")
                elif layer_of(target) < own:
                    upward.append(f"{module} imports {target}")
        self.assertEqual(upward, [])

    def test_tools_import_nothing_of_the_daemon(self):
        found, outside = [], []
        for path, module in modules():
            if not tool_of(module):
                continue
            found.append(module)
            for target in sorted(imports(path, module)):
                if not tool_import_allowed(module, target):
                    outside.append(f"{module} imports {target}")
        self.assertEqual(outside, [])
        self.assertIn("cyme.client.transport", found)
        self.assertIn("cyme.cli.main", found)

    def test_a_tool_importing_the_daemon_is_found(self):
        # The check itself: the client importing the daemon's errors, or the
        # command the daemon's models, or the client the command above it,
        # is seen; the command on the client, and the version, are not.
        path = self.mktemp() + ".py"
        with open(path, "w", encoding="utf-8") as f:
            f.write("from cyme import errors, __version__\nfrom ..cli import output\n")
        found = imports(path, "cyme.client.apps")
        self.assertEqual(found, {"cyme.errors", "cyme.__version__", "cyme.cli"})
        allowed = {t for t in found if tool_import_allowed("cyme.client.apps", t)}
        self.assertEqual(allowed, {"cyme.__version__"})
        self.assertFalse(tool_import_allowed("cyme.cli.main", "cyme.state.models"))
        self.assertFalse(tool_import_allowed("cyme.cli.main", "cyme.api"))
        self.assertTrue(tool_import_allowed("cyme.cli.main", "cyme.client.errors"))
        # And the daemon importing a tool is seen as such.
        self.assertEqual(tool_of("cyme.client.apps"), "cyme.client")
        self.assertEqual(tool_of("cyme.cli"), "cyme.cli")
        self.assertIsNone(tool_of("cyme.clientele"))

    def test_an_upward_import_is_found(self):
        # The check itself: a state module importing the API, absolutely or
        # relatively, is seen as an import of a layer above.
        path = self.mktemp() + ".py"
        with open(path, "w", encoding="utf-8") as f:
            f.write("from cyme.api import routes\nfrom ..operations import local\n")
        found = imports(path, "cyme.state.models")
        self.assertEqual(found, {"cyme.api", "cyme.operations"})
        self.assertLess(layer_of("cyme.api"), layer_of("cyme.state.models"))
        self.assertLess(layer_of("cyme.operations"), layer_of("cyme.state.models"))

    def test_no_module_over_450_lines(self):
        long = []
        for path, module in modules():
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > 450:
                long.append(f"{module}: {count} lines")
        self.assertEqual(long, [])
