"""`voxbatch api` and `voxbatch keys create`."""

from __future__ import annotations

from typing import Any

import click

from api.cli.common import load_settings, one_line_errors
from jobs.errors import InputError
from jobs.settings import Settings


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """Connection limits for uvicorn (docs/security.md): idle keep-alive connections closed after
    5 s, at most ``VOXBATCH_MAX_CONNECTIONS`` at once (503 past it), request heads of at most 64 KB."""
    return {
        "timeout_keep_alive": 5,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": 64 * 1024,
    }


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@one_line_errors
def api(host: str, port: int) -> None:
    """Serve the HTTP API and its web page."""
    import uvicorn

    from api.app import create_app

    settings = load_settings()
    app = create_app(settings)
    click.echo(f"voxbatch: API on http://{host}:{port}/ (docs at /docs)", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        **uvicorn_limits(settings),
    )


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.argument("name")
@one_line_errors
def create(name: str) -> None:
    """Create an API key for tenant NAME (created with its first key); prints the key last."""
    from api.keys import create_key
    from jobs.db import Database

    settings = load_settings()
    db = Database(settings.resolved_database_url())
    db.migrate()
    key = create_key(db, name)
    click.echo("voxbatch: store this key now; it is not shown again", err=True)
    click.echo(key)


@keys.command("retention")
@click.argument("name")
@click.argument("days", type=int, required=False)
@one_line_errors
def retention(name: str, days: int | None) -> None:
    """Delete tenant NAME's finished jobs DAYS days after they end (the sweep does it); no DAYS
    keeps them."""
    from jobs.db import Database
    from jobs.limits import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS
    from jobs.tenants import set_retention

    if days is not None and not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        raise InputError(
            f"DAYS is from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}; leave it out to keep finished jobs"
        )
    settings = load_settings()
    db = Database(settings.resolved_database_url())
    db.migrate()
    if not set_retention(db, name, days):
        raise InputError(f"no tenant {name!r} (it is made with its first key: voxbatch keys create {name})")
    click.echo(
        f"voxbatch: {name}: finished jobs " + (f"deleted after {days} day(s)" if days else "kept"), err=True
    )
