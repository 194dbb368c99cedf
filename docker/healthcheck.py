"""Container health checks: exit 0 when healthy, 1 with one line on stderr when not.

    healthcheck.py http URL [URL ...]   every URL answers 2xx (API /readyz, Flower /healthcheck, vLLM /health)
    healthcheck.py celery               a Celery worker on this host answers a ping over the broker

The celery check proves what matters for a worker: its consumer loop is alive and reaches Redis.
It pings through a bare Celery app on VOXBATCH_BROKER_URL, so it does not import the tasks.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

TIMEOUT_S = 10.0


def check_http(urls: Sequence[str]) -> str | None:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                if not 200 <= response.status < 300:
                    return f"{url} answered {response.status}"
        except urllib.error.HTTPError as exc:
            return f"{url} answered {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"{url} unreachable: {exc}"
    return None


def check_celery(hostname: str | None = None) -> str | None:
    from celery import Celery

    from jobs.settings import Settings

    host = hostname or socket.gethostname()
    app = Celery("voxbatch-healthcheck", broker=Settings().broker_url)
    try:
        replies = app.control.ping(timeout=TIMEOUT_S / 2)
    except Exception as exc:  # kombu raises many connection error types; any of them is "unhealthy"
        return f"broker unreachable: {exc}"
    finally:
        app.close()
    names = [name for reply in replies for name in reply]
    if any(name.endswith("@" + host) for name in names):
        return None
    return f"no worker on {host} answered a ping (answers from: {', '.join(names) or 'none'})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["http"] and len(args) > 1:
        problem = check_http(args[1:])
    elif args == ["celery"]:
        problem = check_celery()
    else:
        print("usage: healthcheck.py http URL [URL ...] | healthcheck.py celery", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
