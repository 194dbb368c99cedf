"""What every command shares: one-line errors and exit codes, settings, the job options.

Exit codes: 0 done; 1 the job failed or was cancelled; 2 bad input or usage; 130 interrupted.
Errors print one line on stderr, never a traceback (``--verbose`` logs the details).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from jobs.errors import InputError, JobCancelled, NotFound, TransientError, VoxbatchError
from jobs.limits import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES
from jobs.runtime import Runtime
from jobs.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> None:
    click.echo(f"voxbatch: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Turn every error a user can cause into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
        except (InputError, NotFound) as exc:
            fail(f"error: {exc}", EXIT_INPUT)
        except JobCancelled as exc:
            fail(f"{exc}", EXIT_FAILED)
        except TransientError as exc:
            fail(f"failed: {exc}; run the same command again to resume", EXIT_FAILED)
        except VoxbatchError as exc:
            fail(f"failed: {exc}", EXIT_FAILED)
        except ValueError as exc:  # pydantic settings validation and the like
            fail(f"error: {one_line(exc)}", EXIT_INPUT)

    return wrapper  # type: ignore[return-value]


def runtime() -> Runtime:
    """The Runtime of a one-shot command, from VOXBATCH_* settings."""
    from workers.runtime import build_runtime

    return build_runtime(load_settings())


def one_line(exc: Exception) -> str:
    """The reason in one line: a settings error names the variable and what is wrong with it."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        name = f"VOXBATCH_{where.upper()}: " if where else ""
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return f"bad VOXBATCH_ setting: {name}{message}"
    return " ".join(str(exc).split())


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError names the variable
        raise InputError(one_line(exc)) from exc


def job_options(fn: F) -> F:
    """The options shared by `run` and `submit`."""
    fn = click.option(
        "--window-minutes",
        type=float,
        default=None,
        help=f"Longest window sent to the model, in minutes ({MIN_WINDOW_MINUTES}-{MAX_WINDOW_MINUTES}; "
        f"default {MAX_WINDOW_MINUTES}).",
    )(fn)
    fn = click.option(
        "--language", default=None, help="ISO 639-1 code of the spoken language (default: detected)."
    )(fn)
    fn = click.option(
        "--preset", default=None, help="conference-talk (default), panel, meeting, lecture or voice-journal."
    )(fn)
    fn = click.option(
        "--instructions", default=None, help="Your own words on what the summaries should say or look like."
    )(fn)
    fn = click.option(
        "--priority",
        default=None,
        help="interactive (default) or batch: interactive work is served first; tenants share each "
        "class fairly.",
    )(fn)
    fn = click.option(
        "--vocabulary",
        default=None,
        help='Names and terms said in the recording, comma-separated ("Voxtral, Kubernetes"): '
        "engines that take a vocabulary spell them this way; summaries use them.",
    )(fn)
    return fn


def tenant_option(fn: F) -> F:
    """``--tenant NAME``: act for an API tenant, so its key sees (and searches) what is made."""
    return click.option(
        "--tenant",
        default=None,
        metavar="NAME",
        help="Act for API tenant NAME (made by `voxbatch keys create NAME`): its API key sees and "
        "searches these jobs and collections. Default: the command line's own, which no API key sees.",
    )(fn)


def checked_tenant(rt: Runtime, tenant: str | None) -> str | None:
    """``--tenant``'s value, refused in one line when no key ever made that tenant."""
    from jobs.tenants import tenant_exists

    if tenant is not None and not tenant_exists(rt.db, tenant):
        raise InputError(
            f"no tenant {tenant[:100]!r} (it is made with its first key: voxbatch keys create NAME)"
        )
    return tenant


def collection_hint(rt: Runtime, tenant: str | None, ref: str | None) -> str:
    """What to add to "no collection NAME" on the command line: the tenants that have one by that
    name when the command named none (the operator sees every tenant)."""
    from jobs.collections import owners

    found = owners(rt.db, ref or "") if tenant is None else []
    if not found:
        return ""
    return f"; tenant {', '.join(repr(t) for t in found[:5])} has one: add --tenant {found[0]}"
