"""``cyme``, the management command: any branch of a cluster, over HTTP,
through L{cyme.client}."""

from urllib.parse import urlsplit

import click

from cyme.cli import cluster, resources
from cyme.cli.base import FORMATS, Root, Settings, complete_apps
from cyme.client import DEFAULT_URL

EPILOG = """\b
The original Cyme's grammar works too: cyme apps.add NAME, cyme -a APP
instances.autoscale NAME 4 1.  Examples:
  cyme apps add foo
  cyme -a foo instances add --pool solo
  cyme -a foo queues add tasks
  cyme -a foo consumers add w1 tasks
  cyme status
  cyme events -t ready,unresponsive
Exit status: 0 done, 1 an error of the API (one line on stderr), 2 a usage error.
Shell completion (bash): eval "$(_CYME_COMPLETE=bash_source cyme)"
"""


def check_url(ctx, param, value):
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise click.BadParameter("a branch's URL takes no user or password: use --token")
    return value


@click.group(cls=Root, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="CYME_URL", default=DEFAULT_URL, show_default=True,
              callback=check_url, help="A branch's API (env CYME_URL).")
@click.option("--token", envvar="CYME_TOKEN", metavar="TOKEN",
              help="A bearer token (env CYME_TOKEN; the environment keeps it out of ps).")
@click.option("--cacert", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The CA certificate(s) of a branch served over TLS with a private CA.")
@click.option("-F", "--format", "fmt", type=click.Choice(FORMATS), default="pretty",
              show_default=True, help="pretty: aligned text; json: the API's JSON.")
@click.option("-n", "--nowait", is_flag=True,
              help="Writes: do not wait for workers, the branch answers 202 at once.")
@click.option("-a", "--app", metavar="APP", shell_complete=complete_apps,
              help="The app of the command (instances, queues, consumers, task).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for each answer.")
@click.version_option(package_name="cyme", prog_name="cyme")
@click.pass_context
def cli(ctx, url, token, cacert, fmt, nowait, app, timeout):
    """Manage a cyme cluster (apps, worker instances, queues) through any branch."""
    ctx.obj = Settings(url, token, cacert, fmt, nowait, app, timeout)


for command in (resources.apps, resources.instances, resources.queues, resources.consumers,
                cluster.branches, cluster.status, cluster.events, cluster.drift, cluster.queue,
                cluster.task, cluster.token):
    cli.add_command(command)


def main(argv=None):
    """The console script: exits with 0, 1 (an API error) or 2 (a usage error)."""
    cli.main(args=argv, prog_name="cyme")
