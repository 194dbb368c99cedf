"""The ``voxbatch`` command line: one group, every command registered here explicitly.

Each command is thin: parse, build a Runtime, call one use case of the core (``jobs.steps``) or
start a service (``workers``). The modules beside this one hold the commands, by what they do.
"""

from __future__ import annotations

import click

from api.cli import collection_commands, deploy, job_commands, run, server, services, watch
from jobs.logconfig import CLI_FORMAT, configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what every step does (to stderr).")
@click.version_option(package_name="voxbatch")
def cli(verbose: bool) -> None:
    """voxbatch: long recordings in, finished documents out."""
    # Long-running commands (worker, api, up) reconfigure with timestamps; one-shot commands
    # print warnings as plain lines.
    configure_logging(verbose, fmt=CLI_FORMAT)


for command in (
    run.run,
    job_commands.submit,
    job_commands.status,
    job_commands.wait,
    job_commands.fetch,
    job_commands.cancel,
    job_commands.retry,
    job_commands.list_jobs,
    job_commands.delete,
    collection_commands.collection,
    services.worker,
    services.flower,
    services.up,
    server.api,
    server.keys,
    watch.watch,
    deploy.vllm,
):
    cli.add_command(command)


def main() -> None:
    cli()
