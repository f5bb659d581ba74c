"""``cyme apps``, ``instances``, ``queues`` and ``consumers``: the original
Cyme's commands, each a thin call of L{cyme.client}."""

import click

from cyme.cli.base import Section, json_object, key_values, pass_settings, shared

SET = click.option("-s", "--set", "settings_", multiple=True, metavar="KEY=VALUE",
                   help="Another parameter of the API (repeatable), as curl's -d would send it.")


# Apps


@click.group(cls=Section, help="The apps (each with its broker and worker settings).")
def apps():
    pass


@apps.command("list", help="The names of every app.")
@shared
@pass_settings
def apps_list(settings):
    settings.emit(settings.client.all())


@apps.command("add", help="Create app NAME (or change it), on BROKER_URL or the branch's broker.")
@click.argument("name")
@click.argument("broker_url", required=False)
@SET
@shared(nowait=True)
@pass_settings
def apps_add(settings, name, broker_url, settings_):
    params = key_values(settings_)
    settings.emit(settings.client.add(name, broker=broker_url, nowait=settings.nowait,
                                     **params).info)


@apps.command("get", help="App NAME.")
@click.argument("name")
@shared
@pass_settings
def apps_get(settings, name):
    settings.emit(settings.client.get(name).info)


@apps.command("delete", help="Delete app NAME with its instances and queues.")
@click.argument("name")
@shared(nowait=True)
@pass_settings
def apps_delete(settings, name):
    settings.emit(settings.client.delete(name, nowait=settings.nowait))


# Instances


@click.group(cls=Section, help="The app's worker instances (-a APP).")
def instances():
    pass


def _instances(settings, name=None):
    """The instances section of the app of -a, or of instance C{name}'s app."""
    app = settings.app_of(name) if name is not None else settings.need_app()
    return settings.client.app(app).instances


@instances.command("list", help="The names of the app's instances, on every branch.")
@shared
@pass_settings
def instances_list(settings):
    settings.emit(_instances(settings).names())


@instances.command("add", help="Create an instance (NAME: a UUID if not given) and start it.")
@click.argument("name", required=False)
@click.argument("broker_url", required=False)
@click.option("--pool", help="prefork (default), solo, threads, eventlet or gevent.")
@click.option("--queues", metavar="Q1,Q2", help="The declared queues it consumes.")
@click.option("--max", "max_", type=int, help="max_concurrency (default 1).")
@click.option("--min", "min_", type=int, help="min_concurrency (default 1).")
@click.option("--branch", help="The branch that runs it (default: the least loaded).")
@SET
@shared(nowait=True)
@pass_settings
def instances_add(settings, name, broker_url, pool, queues, max_, min_, branch, settings_):
    params = {"pool": pool, "queues": queues, "max_concurrency": max_,
              "min_concurrency": min_, "branch": branch, **key_values(settings_)}
    params = {k: v for k, v in params.items() if v is not None}
    instance = _instances(settings).add(name, broker=broker_url, nowait=settings.nowait,
                                        **params)
    settings.emit(instance.info)


@instances.command("get", help="Instance NAME: its settings and its worker's state.")
@click.argument("name")
@shared
@pass_settings
def instances_get(settings, name):
    if settings.app:
        settings.emit(_instances(settings).get(name).info)
    else:
        settings.emit(settings.client.instance(name).info)


@instances.command("delete", help="Delete instance NAME: its worker is stopped.")
@click.argument("name")
@shared(nowait=True)
@pass_settings
def instances_delete(settings, name):
    settings.emit(_instances(settings, name).delete(name, nowait=settings.nowait))


@instances.command("stats", help="The live statistics of instance NAME's worker.")
@click.argument("name")
@shared
@pass_settings
def instances_stats(settings, name):
    settings.emit(_instances(settings, name).stats(name))


@instances.command("autoscale", help="The autoscale bounds of NAME; sets MAX (and MIN) if given.")
@click.argument("name")
@click.argument("max_", metavar="[MAX]", type=int, required=False)
@click.argument("min_", metavar="[MIN]", type=int, required=False)
@shared(nowait=True)
@pass_settings
def instances_autoscale(settings, name, max_, min_):
    settings.emit(_instances(settings, name).autoscale(name, max=max_, min=min_,
                                                       nowait=settings.nowait))


def _lifecycle(action, text):
    @instances.command(action, help=text)
    @click.argument("name")
    @shared(nowait=True)
    @pass_settings
    def command(settings, name):
        section = _instances(settings, name)
        settings.emit(getattr(section, action)(name, nowait=settings.nowait).info)

    return command


_lifecycle("restart", "Restart NAME's worker now (clears a quarantine).")
_lifecycle("enable", "Start NAME's worker again after a disable.")
_lifecycle("disable", "Stop NAME's worker and keep it stopped.")


# Queues


@click.group(cls=Section, help="The app's queue declarations (-a APP).")
def queues():
    pass


def _queues(settings):
    return settings.client.app(settings.need_app()).queues


@queues.command("list", help="The names of the app's queues.")
@shared
@pass_settings
def queues_list(settings):
    settings.emit(_queues(settings).names())


@queues.command("add", help="Declare queue NAME (exchange and routing key default to NAME).")
@click.argument("name")
@click.argument("exchange", required=False)
@click.argument("exchange_type", metavar="[TYPE]", required=False)
@click.argument("routing_key", required=False)
@click.argument("options", metavar="[OPTIONS_JSON]", required=False)
@shared(nowait=True)
@pass_settings
def queues_add(settings, name, exchange, exchange_type, routing_key, options):
    options = json_object(options, "OPTIONS_JSON") if options else {}
    queue = _queues(settings).add(name, exchange=exchange, exchange_type=exchange_type,
                                  routing_key=routing_key, nowait=settings.nowait, **options)
    settings.emit(queue.info)


@queues.command("get", help="The declaration of queue NAME.")
@click.argument("name")
@shared
@pass_settings
def queues_get(settings, name):
    settings.emit(_queues(settings).get(name).info)


@queues.command("delete", help="Delete queue NAME; instances consuming it stop.")
@click.argument("name")
@shared(nowait=True)
@pass_settings
def queues_delete(settings, name):
    settings.emit(_queues(settings).delete(name, nowait=settings.nowait))


# Consumers


@click.group(cls=Section, list_takes_args=True,
             help="The queues an instance consumes: cyme consumers INSTANCE.")
def consumers():
    pass


def _consumers(settings, instance):
    return _instances(settings, instance).named(instance).consumers


@consumers.command("list", help="The queues INSTANCE's worker consumes right now.")
@click.argument("instance")
@shared
@pass_settings
def consumers_list(settings, instance):
    settings.emit(_consumers(settings, instance).names())


@consumers.command("add", help="Make INSTANCE consume the declared QUEUE.")
@click.argument("instance")
@click.argument("queue")
@shared(nowait=True)
@pass_settings
def consumers_add(settings, instance, queue):
    settings.emit(_consumers(settings, instance).add(queue, nowait=settings.nowait))


@consumers.command("delete", help="Make INSTANCE stop consuming QUEUE.")
@click.argument("instance")
@click.argument("queue")
@shared(nowait=True)
@pass_settings
def consumers_delete(settings, instance, queue):
    settings.emit(_consumers(settings, instance).delete(queue, nowait=settings.nowait))
