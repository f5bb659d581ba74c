"""The OpenAPI document at /openapi.json: valid OpenAPI 3.1, naming every
route Klein serves (and the queued-URL route the guard serves), and
describing the answers the API really gives.
"""

import re

from jsonschema import Draft202012Validator
from klein import Klein
from openapi_spec_validator import validate
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.api.guard import VERBS
from cyme.api.openapi import document, openapi_path
from cyme.api.routes import BranchAPI
from cyme.api.table import QUEUED_URL, nowait_path
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state import params
from cyme.state.store import MemoryStore


def documented_paths(doc):
    """C{(regex, path item)} of each path of C{doc}: a path parameter with
    an enum stands for its values, any other for itself."""
    found = []
    for path, item in doc["paths"].items():
        enums = {p["name"]: p["schema"]["enum"] for op in item.values()
                 for p in op["parameters"] if p["in"] == "path" and "enum" in p["schema"]}
        pattern = re.sub(
            r"\\{(\w+)\\}",
            lambda m: "(" + "|".join(enums[m.group(1)]) + ")" if m.group(1) in enums
            else m.group(0), re.escape(path))
        found.append((re.compile(pattern + r"\Z"), item))
    return found


def undocumented(url_map, doc):
    """The C{METHOD path} of every rule of C{url_map} the document lacks
    (HEAD goes with GET)."""
    paths = documented_paths(doc)
    lacking = []
    for rule in url_map.iter_rules():
        path = openapi_path(rule.rule)
        items = [item for pattern, item in paths if pattern.match(path)]
        for method in sorted(rule.methods - {"HEAD"}):
            if not any(method.lower() in item for item in items):
                lacking.append(f"{method} {rule.rule}")
    return lacking


class DocumentTests(SynchronousTestCase):
    def setUp(self):
        self.ops = LocalOperations(MemoryStore())
        self.client = APIClient(BranchAPI(self.ops, max_wait=7.5, clock=Clock()).resource())

    def get(self, method, path, **kwargs):
        return self.successResultOf(self.client.request(method, path, **kwargs))

    def served(self):
        response = self.get("GET", "/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        return response.json

    def test_valid_openapi_3_1(self):
        doc = self.served()
        self.assertEqual(doc["openapi"], "3.1.0")
        validate(doc)
        self.assertEqual(self.get("GET", "/openapi.json/").json, doc)

    def test_every_route_is_in_it(self):
        self.assertEqual(undocumented(BranchAPI.app.url_map, self.served()), [])
        # The singular spelling is the {instances} parameter's other value.
        paths = documented_paths(self.served())
        self.assertTrue(any(p.match("/{app}/instance/!/{name}/restart/") for p, _ in paths))
        self.assertFalse(any(p.match("/{app}/instancez/{name}/") for p, _ in paths))

    def test_a_route_outside_the_table_is_found(self):
        extra = Klein()
        extra.route("/<app>/frobnicate", methods=["POST"])(lambda request, app: None)
        extra.route("/<app>/instances", methods=["PATCH"])(lambda request, app: None)
        self.assertEqual(undocumented(extra.url_map, self.served()),
                         ["POST /<app>/frobnicate", "PATCH /<app>/instances"])

    def test_the_queued_url_route(self):
        # Served by the guard, not Klein: the one route known by name.
        doc = self.served()
        operations = doc["paths"]["/{app}/queue/{queue}/{url}"]
        self.assertEqual(sorted(operations), sorted(v.lower() for v in VERBS if v != "CONNECT"))
        self.assertIn("CONNECT", operations["post"]["description"])
        self.assertTrue(operations["head"]["responses"]["202"]["headers"]["Location"][
            "required"])
        self.assertNotIn("content", operations["head"]["responses"]["202"])
        self.assertIn("slashes included", operations["post"]["description"])
        self.assertEqual(QUEUED_URL.handler, "queue_task")

    def test_aliases_and_no_wait_forms(self):
        paths = self.served()["paths"]
        for path, methods in [
            ("/{app}/{instances}/{name}/autoscale/", {"get", "put", "post"}),
            ("/{app}/{instances}/!/{name}/", {"put", "post", "delete"}),
            ("/{app}/{instances}/!/", {"put", "post"}),
            ("/{app}/queues/!/{name}/", {"put", "post", "delete"}),
            ("/{app}/{instances}/{name}/queues/!/{queue}/", {"put", "post", "delete"}),
            ("/!/{app}/", {"put", "post", "delete"}),
            ("/tokens/!/", {"post"}),
        ]:
            self.assertEqual(set(paths[path]), methods, path)
        self.assertEqual(set(paths["/{app}/{instances}/!/{name}/"]["delete"]["responses"]),
                         {"202", "400", "401", "403", "404", "413", "503", "504"})

    def test_partial_answers_name_the_missing_branches(self):
        paths = self.served()["paths"]
        for path, method in [("/", "get"), ("/{app}/{instances}/", "get"),
                             ("/{app}/", "put"), ("/{app}/queues/!/{name}/", "delete")]:
            responses = paths[path][method]["responses"]
            success = [r for s, r in responses.items() if s.startswith("2")]
            self.assertIn("Cyme-Missing-Branches", success[0]["headers"], path)

    def test_nowait_path(self):
        self.assertEqual(nowait_path("/<app>/instances/<name>/queues/<queue>"),
                         "/<app>/instances/<name>/queues/!/<queue>")
        self.assertEqual(nowait_path("/<app>/instances/<name>/restart"),
                         "/<app>/instances/!/<name>/restart")
        self.assertEqual(nowait_path("/<app>/instances"), "/<app>/instances/!")

    def test_parameters_come_from_the_parameter_sets(self):
        paths = self.served()["paths"]
        for path, names in [("/{app}/", params.APP_PARAMS),
                            ("/{app}/{instances}/{name}/", params.INSTANCE_PARAMS | {"branch"}),
                            ("/{app}/queues/{name}/", params.QUEUE_PARAMS)]:
            body = paths[path]["put"]["requestBody"]["content"]
            for media in ("application/json", "application/x-www-form-urlencoded",
                          "multipart/form-data"):
                self.assertEqual(set(body[media]["schema"]["properties"]), names, path)

    def test_the_wait_bound_is_the_branch_s(self):
        wait = self.served()["paths"]["/{app}/query/{task_id}/wait/"]["get"]
        (timeout,) = [p for p in wait["parameters"] if p["name"] == "timeout"]
        self.assertEqual(timeout["schema"]["maximum"], 7.5)
        self.assertEqual(document()["paths"]["/{app}/query/{task_id}/wait/"]["get"][
            "parameters"][-1]["schema"]["maximum"], 300.0)

    def test_open_routes_and_the_security_schemes(self):
        doc = self.served()
        self.assertEqual(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer")
        self.assertEqual(doc["paths"]["/ping/"]["get"]["security"], [])
        self.assertNotIn("security", doc["paths"]["/{app}/"]["get"])

    def test_passwords_in_it_are_not_masked(self):
        # The document is no record: its "password" fields are schemas.
        doc = self.served()
        self.assertIsInstance(doc["components"]["schemas"]["Broker"]["properties"]["password"],
                              dict)


class AnswersMatchTests(SynchronousTestCase):
    """What the API answers validates against the document's schemas."""

    def setUp(self):
        self.client = APIClient(BranchAPI(LocalOperations(MemoryStore()), clock=Clock()).resource())
        self.doc = document()

    def call(self, method, path, schema, status, **kwargs):
        response = self.successResultOf(self.client.request(method, path, **kwargs))
        self.assertEqual(response.code, status, response.body)
        operation = self.doc["paths"][_template(path)][method.lower()]
        documented = operation["responses"][str(status)]["content"]["application/json"]
        self.assertEqual(documented["schema"], {"$ref": f"#/components/schemas/{schema}"})
        validator = Draft202012Validator({**documented["schema"],
                                          "components": self.doc["components"]})
        errors = [e.message for e in validator.iter_errors(response.json)]
        self.assertEqual(errors, [], f"{method} {path}: {response.json}")
        return response.json

    def test_records(self):
        self.call("PUT", "/foo/?imports=&task_timeout=5", "App", 201)
        self.call("GET", "/foo/", "App", 200)
        self.call("GET", "/", "Names", 200)
        self.call("PUT", "/foo/queues/tasks/?options={\"durable\":true}", "Queue", 201)
        self.call("PUT", "/foo/instances/w1/?queues=tasks&broker=amqp://h//", "Instance", 201)
        self.call("GET", "/foo/instances/w1/", "Instance", 200)
        self.call("GET", "/foo/instances/w1/queues/tasks/", "Queue", 200)
        self.call("POST", "/foo/instances/w1/autoscale/", "Autoscale", 200)
        self.call("PUT", "/foo/instances/w1/queues/tasks/", "Ok", 200)
        self.call("POST", "/tokens/?name=ci&scope=read", "NewToken", 201)
        self.call("GET", "/tokens/", "Tokens", 200)
        self.call("GET", "/branches/branch/", "Branch", 200)
        self.call("GET", "/foo/query/abc/state/", "TaskState", 200)
        self.call("GET", "/foo/query/abc/result/", "Task", 200)
        self.call("DELETE", "/foo/instances/!/w1/", "Ok", 202)


def _template(path):
    """The document's path of a request path of L{AnswersMatchTests}."""
    path = path.split("?")[0]
    for pattern, template in [
        (r"/tokens/", "/tokens/"), (r"/branches/[^/]+/", "/branches/{branch}/"),
        (r"/[^/]+/query/[^/]+/(\w+)/", r"/{app}/query/{task_id}/\1/"),
        (r"/[^/]+/instances/!/[^/]+/", "/{app}/{instances}/!/{name}/"),
        (r"/[^/]+/instances/[^/]+/queues/[^/]+/", "/{app}/{instances}/{name}/queues/{queue}/"),
        (r"/[^/]+/instances/[^/]+/(\w+)/", r"/{app}/{instances}/{name}/\1/"),
        (r"/[^/]+/instances/[^/]+/", "/{app}/{instances}/{name}/"),
        (r"/[^/]+/queues/[^/]+/", "/{app}/queues/{name}/"), (r"/", "/"),
        (r"/[^/]+/", "/{app}/"),
    ]:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, template, path) if "\\1" in template else template
    raise AssertionError(path)
