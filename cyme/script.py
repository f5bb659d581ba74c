"""The ``cyme-branch`` command: ``twistd cyme-branch`` in the foreground,
``cyme-branch token ...`` to make, list and revoke API tokens, and
``cyme-branch cluster-key new FILE`` to make a cluster key.

It takes the same options as the twistd plugin.  twistd's pid file in the
current directory is turned off: the branch locks its own root directory,
so two branches can run from one directory without tripping over it.

``cyme-branch token`` works on the branch of a root directory (C{-D}): it
asks the running branch over the loopback URL the branch wrote in its root
(C{api.url}), which trusts it as a loopback caller (with
C{--no-trust-loopback}, it sends the admin token in C{$CYME_TOKEN}); while
no branch runs there, it changes the root's state file itself, holding the
root's lock as a branch would.
"""

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
from urllib.parse import urlsplit

TOKEN_USAGE = """\
cyme-branch token create --name NAME --scope read[,write,admin] [--expires 30d] [-D ROOT]
cyme-branch token list [-D ROOT]
cyme-branch token revoke NAME [-D ROOT]"""


CLUSTER_KEY_USAGE = "cyme-branch cluster-key new FILE"


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["token"]:
        sys.exit(token_main(args[1:]))
    if args[:1] == ["cluster-key"]:
        sys.exit(cluster_key_main(args[1:]))
    from twisted.python import usage
    from twisted.scripts.twistd import ServerOptions, runApp

    from cyme.tap import HELP_HINT, StartupFailed

    # twistd's own run(), with cyme-branch's name in its messages, a
    # start-up failure (root directory in use, corrupt state file) reported
    # as one line on stderr, and a bad option as one line and a pointer to
    # --help rather than under the whole usage text.
    sys.argv = ["cyme-branch", "--nodaemon", "--pidfile=", "cyme-branch", *args]
    config = ServerOptions()
    try:
        config.parseOptions(sys.argv[1:])
    except StartupFailed as e:
        sys.stderr.write(f"cyme-branch: {e}\n")
        sys.exit(1)
    except usage.UsageError as e:
        print(f"cyme-branch: {e}\n{HELP_HINT}", file=sys.stderr)
        sys.exit(1)
    runApp(config)


def _parser():
    parser = argparse.ArgumentParser(prog="cyme-branch token", usage=TOKEN_USAGE)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "list", "revoke"):
        command = commands.add_parser(name)
        command.add_argument("-D", "--instance-dir", default="instances/",
                             help="root directory of the branch (default: instances/)")
    commands.choices["create"].add_argument("--name", required=True)
    commands.choices["create"].add_argument("--scope", required=True,
                                            help="read, write, admin, comma-separated")
    commands.choices["create"].add_argument("--expires", default=None,
                                            help="lifetime: 3600, 90m, 12h, 30d, 4w")
    commands.choices["revoke"].add_argument("name")
    return parser


def token_main(argv, out=sys.stdout, err=sys.stderr):
    """C{cyme-branch token ...}; returns the exit status."""
    options = _parser().parse_args(argv)
    root = os.path.abspath(options.instance_dir)
    if not os.path.isdir(root):
        err.write(f"cyme-branch token: no root directory {root}\n")
        return 1
    request = {
        "create": ("POST", "/tokens/", {"name": options.__dict__.get("name"),
                                        "scope": options.__dict__.get("scope"),
                                        "expires": options.__dict__.get("expires")}),
        "list": ("GET", "/tokens/", None),
        "revoke": ("DELETE", f"/tokens/{options.__dict__.get('name')}/", None),
    }[options.command]
    missing = None
    try:
        try:
            status, answer = _offline(root, *request)
        except _BranchRuns as running:
            status, answer, missing = _online(running.url, *request)
    except (OSError, ValueError, http.client.HTTPException) as e:
        err.write(f"cyme-branch token: {e}\n")
        return 1
    if status >= 400:
        err.write(f"cyme-branch token: {answer.get('error', answer)}\n")
        return 1
    if options.command == "create":
        out.write(answer["token"] + "\n")
        err.write(f"token {answer['name']} ({','.join(answer['scopes'])}) made: "
                  "this is the only time it is shown\n")
    elif options.command == "list":
        for token in answer:
            expires = "never" if token["expires"] is None else _when(token["expires"])
            out.write(f"{token['name']}\t{','.join(token['scopes'])}\texpires {expires}\n")
    else:
        out.write(f"revoked {options.name}\n")
    if missing and options.command != "list":
        # Not heard everywhere yet: a revoked token still works there.
        err.write(f"cyme-branch token: branches {missing} did not answer: they learn "
                  "it when they are back; check with cyme-branch token list there\n")
        return 3
    return 0


def cluster_key_main(argv, out=sys.stdout, err=sys.stderr):
    """
    C{cyme-branch cluster-key new FILE}: a fresh cluster key in C{FILE}
    (mode 0600, never over an existing file); returns the exit status.
    The key itself is never printed: copy the file.
    """
    from cyme.cluster.keys import new_key_file
    from cyme.errors import StartupError

    if len(argv) != 2 or argv[0] != "new" or argv[1].startswith("-"):
        err.write(f"usage: {CLUSTER_KEY_USAGE}\n")
        return 2
    try:
        key = new_key_file(argv[1])
    except StartupError as e:
        err.write(f"cyme-branch cluster-key: {e}\n")
        return 1
    out.write(f"cluster key written to {key.path}: give it to every branch of the "
              "cluster with --cluster-key-file, or copy it to their default place\n")
    return 0


def _when(seconds):
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _BranchRuns(Exception):
    def __init__(self, url):
        super().__init__(url)
        self.url = url


def _offline(root, method, path, body):
    """Run the request on the root's state file, unless a branch holds it."""
    from twisted.internet import defer

    from cyme.errors import CymeError, StartupError
    from cyme.operations.local import LocalOperations
    from cyme.state.rootdir import RootDir
    from cyme.state.store import JSONFileStore

    try:
        rootdir = RootDir.open(root)
    except StartupError as e:
        if "in use" not in str(e):
            raise OSError(str(e)) from None
        try:
            with open(os.path.join(root, "api.url"), encoding="utf-8") as f:
                raise _BranchRuns(f.read().strip()) from None
        except FileNotFoundError:
            raise OSError(f"{e}, which serves no HTTP API on this machine") from None
    try:
        ops = LocalOperations(JSONFileStore(rootdir.state_path),
                              branch_id=rootdir.branch_id())
        call = {"POST": lambda: ops.create_token(body), "GET": ops.list_tokens,
                "DELETE": lambda: ops.revoke_token(path.split("/")[2])}[method]
        try:
            result = defer.ensureDeferred(call())
            failures = []
            result.addErrback(failures.append)
            if failures:
                failures[0].raiseException()
        except CymeError as e:
            return e.status, e.to_json()
        answer = result.result
        return 200, answer[0] if method == "POST" else answer
    except StartupError as e:
        raise OSError(str(e)) from None
    finally:
        rootdir.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _online(url, method, path, body):
    """Send the request to the running branch at its loopback C{url}."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        connection = _UnixConnection(parts.path)
    elif parts.scheme == "https":
        # The branch's own certificate, on this machine's loopback: there
        # is no name to verify it against.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10,
                                                 context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if os.environ.get("CYME_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['CYME_TOKEN']}"
    data = None if body is None else json.dumps(
        {k: v for k, v in body.items() if v is not None})
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read() or b"null")
    connection.close()
    return response.status, answer, response.getheader("Cyme-Missing-Branches")


if __name__ == "__main__":
    main()
