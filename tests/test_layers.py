"""
The package's layers import one way, down (see cyme/__init__.py): a module
that imported a layer above its own would tie the lower layer to the upper
one, and the next restructure would start by untangling it.
"""

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import cyme

#: From the top down; a module may import its own layer and those below it.
LAYERS = [
    {"cyme.__main__", "cyme.script", "cyme.tap", "cyme.addresses", "cyme.systemd",
     "cyme.jsonlog"},
    {"cyme.api"},
    {"cyme.operations"},
    {"cyme.cluster"},
    {"cyme.supervision"},
    {"cyme.tasks"},
    {"cyme.state"},
    {"cyme.amqp"},
    {"cyme", "cyme.errors", "cyme.logs", "cyme.backoff", "cyme.gather",
     "cyme.listeners", "cyme.fence"},
]


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
            own = layer_of(module)
            for target in sorted(imports(path, module)):
                if target == "cyme.__version__":
                    continue
                if layer_of(target) < own:
                    upward.append(f"{module} imports {target}")
        self.assertEqual(upward, [])

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
