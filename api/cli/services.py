"""Service commands: ``voxbatch worker``, ``voxbatch flower`` and ``voxbatch up``.

``worker`` and ``flower`` replace this process with Celery's (same pid), so signals sent to the
pid a supervisor knows reach Celery directly.

Flower's authentication: ``VOXBATCH_FLOWER_BASIC_AUTH=user:password``. ``voxbatch flower`` refuses to
start without it unless ``--no-auth`` is given; ``voxbatch up`` generates a password when none is
set and prints it, since it is the one-machine convenience command.
"""

from __future__ import annotations

import os
import secrets
import sys

import click

from api.cli.common import load_settings, one_line_errors
from jobs.errors import InputError

DEFAULT_FLOWER_PORT = 5555


def _migrate() -> None:
    from jobs.db import Database

    Database(load_settings().resolved_database_url()).migrate()


@click.command()
@click.option("--queues", default="cpu,gpu", show_default=True, help="cpu, gpu or cpu,gpu.")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Parallel tasks (gpu: threads, default VOXBATCH_GPU_CONCURRENCY; cpu: processes, default "
    "the number of CPUs).",
)
@click.option("--loglevel", default="INFO", show_default=True)
@one_line_errors
def worker(queues: str, concurrency: int | None, loglevel: str) -> None:
    """A Celery worker for the cpu queue (split, reduce, sweep) and/or the gpu queue (windows)."""
    from workers.services import parse_queues, worker_argv, worker_env

    settings = load_settings()
    chosen = parse_queues(queues)
    if concurrency is None:
        concurrency = settings.gpu_concurrency if "gpu" in chosen else (os.cpu_count() or 1)
    if concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    _migrate()
    argv = worker_argv(chosen, concurrency, loglevel)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, worker_env())


@click.command()
@click.option("--port", type=int, default=DEFAULT_FLOWER_PORT, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--no-auth", is_flag=True, help="Run without authentication (its API is then open to anyone).")
@one_line_errors
def flower(port: int, address: str, no_auth: bool) -> None:
    """Flower for this app, with basic auth from VOXBATCH_FLOWER_BASIC_AUTH (user:password)."""
    from workers.services import check_basic_auth, flower_argv, flower_env

    settings = load_settings()
    auth: str | None = None
    if settings.flower_basic_auth:
        auth = check_basic_auth(settings.flower_basic_auth)
    env = flower_env(auth)
    if not auth and no_auth:
        # Flower's API answers 401 without auth unless this is set; --no-auth means open.
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    elif not auth:
        raise InputError(
            "set VOXBATCH_FLOWER_BASIC_AUTH=user:password (or pass --no-auth to run Flower open to anyone)"
        )
    argv = flower_argv(address, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


@click.command()
@click.option("--flower-port", type=int, default=DEFAULT_FLOWER_PORT, show_default=True)
@click.option("--api-port", type=int, default=8000, show_default=True)
@click.option("--cpu-concurrency", type=int, default=None, help="Default: the number of CPUs.")
@click.option("--gpu-concurrency", type=int, default=None, help="Default: VOXBATCH_GPU_CONCURRENCY.")
@one_line_errors
def up(flower_port: int, api_port: int, cpu_concurrency: int | None, gpu_concurrency: int | None) -> None:
    """Everything on this machine in the foreground: Redis (if none answers), workers, Flower,
    the API and, when VOXBATCH_DROP_URL is set, the drop-folder watcher."""
    from workers.services import UpOptions, check_basic_auth, run_up

    settings = load_settings()
    auth = settings.flower_basic_auth
    if auth:
        check_basic_auth(auth)
    else:
        auth = f"voxbatch:{secrets.token_urlsafe(12)}"
        click.echo(f"voxbatch: no VOXBATCH_FLOWER_BASIC_AUTH set; Flower login is {auth}", err=True)
    _migrate()
    options = UpOptions(
        settings=settings,
        cpu_concurrency=cpu_concurrency or os.cpu_count() or 1,
        gpu_concurrency=gpu_concurrency or settings.gpu_concurrency,
        flower_port=flower_port,
        flower_address="127.0.0.1",
        api_port=api_port,
        flower_basic_auth=auth,
        voxbatch_cli=(sys.executable, "-m", "api.cli"),
    )
    code = run_up(options, lambda line: click.echo(f"voxbatch: {line}", err=True))
    sys.exit(code)
