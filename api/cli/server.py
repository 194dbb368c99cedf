"""`voxbatch api` and `voxbatch keys create`."""

from __future__ import annotations

import click

from api.cli.common import load_settings, one_line_errors


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@one_line_errors
def api(host: str, port: int) -> None:
    """Serve the HTTP API and its web page."""
    import uvicorn

    from api.app import create_app

    app = create_app(load_settings())
    click.echo(f"voxbatch: API on http://{host}:{port}/ (docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=True, timeout_graceful_shutdown=10)


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
