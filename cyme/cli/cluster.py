"""``cyme branches``, ``status``, ``queue``, ``task`` and ``token``: the
cluster as a whole, queued URLs, and the API's tokens."""

import click

from cyme.cli import status as status_view
from cyme.cli.base import Section, key_values, pass_settings, shared
from cyme.cli import output
from cyme.cli.output import table
from cyme.client import APIError, NotFound, TaskFailed


def when(seconds):
    return "never" if seconds is None else output.when(seconds)


@click.command(help="The live branches (with ID: that branch's details).")
@click.argument("branch_id", metavar="[ID]", required=False)
@shared
@pass_settings
def branches(settings, branch_id):
    client = settings.client
    if branch_id is not None:
        settings.emit(client.branch(branch_id))
        return
    ids = client.branches()
    if settings.format == "json":
        settings.emit(ids)
        return
    rows = []
    for info in (client.branch(i) for i in ids):
        limits = info.get("limits") or {}
        rows.append([info.get("id"), info.get("url"), len(info.get("instances") or []),
                     limits.get("max_instances"), info.get("version"),
                     f"{info.get('uptime', 0):.0f}s", info.get("online")])
    columns = ["id", "url", "instances", "max_instances", "version", "uptime", "online"]
    settings.emit(ids, table(columns, rows) if rows else "no live branch")


@click.command(help="Every instance of the cluster: what was asked and what runs, "
                    "one line each; * marks those where they differ.")
@shared
@pass_settings
def status(settings):
    client = settings.client
    ids = client.branches()
    found = []
    for app in client.all():
        section = client.app(app).instances
        for name in section.names():
            try:
                found.append(section.get(name).info)
            except NotFound:
                pass  # deleted since it was listed
            except APIError as e:
                # Its branch did not answer in time: one line says so, the
                # others are shown.
                found.append({"name": name, "app": app, "state": "unknown",
                              "last_error": e.message})
    rows = status_view.rows(found)
    settings.emit({"branches": ids, "instances": rows}, status_view.pretty(ids, rows))


@click.command(help="Follow the cluster's events as they happen (Ctrl-C ends): workers "
                    "started, ready, unresponsive, stopped, restarted...; instances, apps, "
                    "queues and branches.")
@click.option("-t", "--type", "types", multiple=True, metavar="TYPE",
              help="Only events of TYPE (repeatable, or comma-separated).")
@click.option("-l", "--last", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="Show the latest N events first.")
@click.option("-c", "--count", type=click.IntRange(min=1), metavar="N",
              help="Stop after N events.")
@shared
@pass_settings
def events(settings, types, last, count):
    types = [t for given in types for t in given.split(",") if t]
    stream = settings.client.events(app=settings.app, types=types, last=last)
    try:
        for n, event in enumerate(stream, 1):
            settings.emit(event, event_line(event))
            if count is not None and n >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()


def event_line(event):
    """One line a person reads: time, branch, type, what it is about, why."""
    about = "/".join(x for x in (event.get("app"), event.get("instance") or event.get("peer"))
                     if x)
    parts = [when(event.get("time")), event.get("branch") or "-", event.get("type"),
             about or "-", event.get("reason") or ""]
    return "  ".join(str(p) for p in parts).rstrip()


@click.command(help="Every instance of the cluster whose worker differs from what it asks, "
                    "and how (worker down, queues not consumed yet, autoscale not applied).")
@shared
@pass_settings
def drift(settings):
    found = settings.client.drift()
    lines = [f"{i.get('name')}  {i.get('app')}  {i.get('branch')}  {d.get('kind')}: "
             f"{d.get('detail')} (since {when(d.get('since'))})"
             for i in found for d in i.get("drift") or []]
    settings.emit(found, "\n".join(lines) if lines else "no drift: every worker is as asked")


@click.command(help="Queue an HTTP request to URL that a worker of APP consuming QUEUE "
                    "makes (GET, or POST with --data).")
@click.argument("app")
@click.argument("queue")
@click.argument("url")
@click.option("-d", "--data", multiple=True, metavar="KEY=VALUE",
              help="A form field of the request's body (repeatable).")
@click.option("-X", "--method", type=click.Choice(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"],
    case_sensitive=False), help="The request's method.")
@click.option("--task-timeout", type=float, metavar="SECONDS",
              help="How long the request may take (default: the app's task_timeout).")
@shared
@pass_settings
def queue(settings, app, queue, url, data, method, task_timeout):
    form = key_values(data, "--data") if data else None
    task = settings.client.app(app).queue(queue, url, data=form, method=method,
                                          timeout=task_timeout)
    settings.emit(task.info)


@click.group(cls=Section, help="A queued URL's task (-a APP): state, result or wait UUID.")
def task():
    pass


@task.command("state", help="PENDING, STARTED, RETRY, SUCCESS or FAILURE.")
@click.argument("uuid")
@shared
@pass_settings
def task_state(settings, uuid):
    handle = settings.client.app(settings.need_app()).task(uuid)
    settings.emit({"uuid": handle.uuid, "state": handle.state})


def _outcome(settings, uuid, read):
    handle = settings.client.app(settings.need_app()).task(uuid)
    try:
        read(handle)
    except TaskFailed as e:
        settings.emit(e.body)
        return
    settings.emit(handle.info)


@task.command("result", help="The task's state and result (the queued request's answer).")
@click.argument("uuid")
@shared
@pass_settings
def task_result(settings, uuid):
    _outcome(settings, uuid, lambda handle: handle.result())


@task.command("wait", help="The task's result once it is done.")
@click.argument("uuid")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait (an error after them).")
@shared
@pass_settings
def task_wait(settings, uuid, timeout):
    _outcome(settings, uuid, lambda handle: handle.wait(timeout))


@click.group(cls=Section, help="The API's tokens (the admin scope).")
def token():
    pass


@token.command("list", help="Every token (never its secret).")
@shared
@pass_settings
def token_list(settings):
    tokens = settings.client.tokens.all()
    rows = [[t.get("name"), ",".join(t.get("scopes") or []), when(t.get("created")),
             when(t.get("expires"))] for t in tokens]
    settings.emit(tokens, table(["name", "scopes", "created", "expires"], rows) if rows else "")


@token.command("create", help="Make a token; its secret is printed this once.")
@click.option("--name", required=True, help="The token's name.")
@click.option("--scope", default="read", show_default=True,
              help="read, write, admin, or several: read,write.")
@click.option("--expires", metavar="DURATION", help="3600, 90m, 12h, 30d or 4w (default: never).")
@shared(nowait=True)
@pass_settings
def token_create(settings, name, scope, expires):
    made = settings.client.tokens.add(name, scope=scope, expires=expires,
                                      nowait=settings.nowait)
    # The secret alone on stdout (for $(...)); what it is on stderr.
    if settings.format == "pretty":
        click.echo(f"token {made.get('name')} ({','.join(made.get('scopes') or [])}), "
                   f"expires {when(made.get('expires'))}: keep it, it is shown this once",
                   err=True)
    settings.emit(made, made.get("token"))


@token.command("revoke", help="Revoke token NAME on every branch.")
@click.argument("name")
@shared(nowait=True)
@pass_settings
def token_revoke(settings, name):
    settings.emit(settings.client.tokens.delete(name, nowait=settings.nowait))
