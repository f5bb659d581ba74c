"""The parts every ``cyme`` command shares: its settings, the original Cyme's
dotted grammar, listing sections, the options accepted anywhere, the output
and the one-line errors."""

import difflib
import functools
import json

import click

from cyme.cli.output import render
from cyme.client import Client, ClientError, NotFound

FORMATS = ("pretty", "json")


class Settings:
    """The options of one run of ``cyme``, and the client they make."""

    def __init__(self, url, token, cacert, fmt, nowait, app, timeout):
        self.url, self.token, self.cacert = url, token, cacert
        self.format, self.nowait, self.app, self.timeout = fmt, nowait, app, timeout
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = Client(self.url, token=self.token, cacert=self.cacert,
                                  timeout=self.timeout, on_partial=_partial)
        return self._client

    def need_app(self):
        """The app of C{-a}, which this command cannot do without."""
        if not self.app:
            raise click.UsageError("this command needs an app: -a APP")
        return self.app

    def app_of(self, instance):
        """The app of C{-a}, else the app of C{instance} (names are unique)."""
        return self.app or self.client.instance(instance).app.name

    def emit(self, value, text=None):
        """Print an answer: its JSON, or C{text} (else its pretty form)."""
        if self.format == "json":
            out = render(value, "json")
        else:
            out = text if text is not None else render(value, "pretty")
        if out:
            click.echo(out)


pass_settings = click.make_pass_decorator(Settings)


def _partial(method, target, missing):
    click.echo(f"cyme: warning: partial answer, no answer from branch(es) "
               f"{', '.join(missing)}", err=True)


class Failure(click.ClickException):
    """An API error (or no answer): one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file=None):
        click.echo(f"cyme: {self.message}", err=True)


def explain(error, settings):
    """The one line a person reads for C{error}; a mistyped app name gets a suggestion."""
    message = error.message
    if isinstance(error, NotFound) and error.detail.get("kind") == "app":
        try:
            known = list(settings.client.all())
        except ClientError:
            known = []
        close = difflib.get_close_matches(str(error.detail.get("name")), known, n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
    return message


class Root(click.Group):
    """
    The ``cyme`` command: C{apps.add} is C{apps add}, as the original
    Cyme wrote it; every API error ends the run with one line and status 1.
    """

    def resolve_command(self, ctx, args):
        head, dot, tail = args[0].partition(".") if args else ("", "", "")
        if dot and tail and args[0] not in self.commands and head in self.commands:
            return head, self.commands[head], [tail, *args[1:]]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClientError as e:
            raise Failure(explain(e, ctx.find_object(Settings))) from None


class Section(click.Group):
    """
    A group whose listing is its default: C{cyme apps} lists the apps, and
    C{cyme consumers W1} (C{list_takes_args}) lists W1's queues; C{all}
    is another name of C{list}.
    """

    def __init__(self, *args, list_takes_args=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.list_takes_args = list_takes_args

    def parse_args(self, ctx, args):
        if ctx.resilient_parsing:  # shell completion: the subcommands are the choices
            return super().parse_args(ctx, args)
        if not args or (self.list_takes_args and args[0] not in self.commands
                        and args[0] != "all" and not args[0].startswith("-")):
            args = ["list", *args]
        return super().parse_args(ctx, args)

    def get_command(self, ctx, name):
        return super().get_command(ctx, "list" if name == "all" else name)


def _setter(name):
    def store(ctx, param, value):
        if value not in (None, False):
            setattr(ctx.find_object(Settings), name, value)
        return value
    return store


def complete_apps(ctx, param, incomplete):
    """Shell completion of app names, asked of the branch of C{--url}."""
    root = ctx.find_root().params
    try:
        client = Client(root.get("url"), token=root.get("token"), cacert=root.get("cacert"),
                        timeout=3, on_partial=lambda *_: None)
        return [n for n in client.all() if n.startswith(incomplete)]
    except ClientError:
        return []


def shared(command=None, *, nowait=False):
    """
    Accept C{-a} and C{-F} after the command's name too, and C{-n} on a
    command that has a no-wait form (C{nowait}); any other command refuses
    C{-n} given before its name (a usage error), rather than ignore it.
    """
    if command is None:
        return lambda command: shared(command, nowait=nowait)
    options = [
        click.option("-a", "--app", "app_option", metavar="APP", expose_value=False,
                     callback=_setter("app"), shell_complete=complete_apps,
                     help="The app (for the app's instances, queues, tasks)."),
        click.option("-F", "--format", "format_option", type=click.Choice(FORMATS),
                     expose_value=False, callback=_setter("format"),
                     help="pretty: aligned text; json: the API's JSON."),
    ]
    if nowait:
        options.append(click.option(
            "-n", "--nowait", "nowait_option", is_flag=True, default=False,
            expose_value=False, callback=_setter("nowait"),
            help="Do not wait for the worker (the branch answers 202 at once)."))
    else:
        command = _waits(command)
    for option in reversed(options):
        command = option(command)
    return command


def _waits(callback):
    """C{callback}, refusing the C{-n} of C{cyme -n COMMAND}: it has no no-wait form."""

    @functools.wraps(callback)
    def run(*args, **kwargs):
        ctx = click.get_current_context()
        if ctx.find_object(Settings).nowait:
            raise click.UsageError(f"-n/--nowait does not apply to '{ctx.command_path}': "
                                   f"it has no no-wait form", ctx)
        return callback(*args, **kwargs)

    return run


def key_values(pairs, what="--set"):
    """C{KEY=VALUE} options as a dict (a usage error otherwise)."""
    found = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=what)
        found.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in found.items()}


def json_object(text, what):
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise click.BadParameter(f"{text!r} is not a JSON object", param_hint=what)
    return value
