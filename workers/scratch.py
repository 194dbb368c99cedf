"""A worker's temporary files live in a folder of its own, removed when it stops and, if it was
killed, by the next worker of the same host that starts.

A step's scratch (the split's windows on their way to storage, a window's FLAC and its segments)
is a ``tempfile.TemporaryDirectory``: removed when the step ends, but not when the process is
SIGKILLed or OOM-killed, and each such kill would leave one more on the worker's disk until it is
full. So the worker's main process, before it forks its pool, makes ``<TMPDIR>/voxbatch-worker-
<host>-<pid>`` the temporary folder of the process and its children (``tempfile.tempdir`` and
``TMPDIR`` for ffmpeg), and removes the ``voxbatch-worker-<host>-*`` folders whose process is gone.
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jobs.errors import TransientError, VoxbatchError

log = logging.getLogger(__name__)

PREFIX = "voxbatch-worker-"
# A step that failed while its temporary folder's filesystem had less room than this failed for
# want of room (a writer's error need not say so: libsndfile answers a full disk with a bare code).
LOW_ROOM_BYTES = 64 * 1024 * 1024
F = TypeVar("F", bound=Callable[..., Any])


class ScratchFull(TransientError):
    """The worker's temporary folder is full: the step is retried with backoff, the job kept."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace("/", "_")


def remove_dead(base: Path, host: str | None = None) -> list[Path]:
    """Remove the scratch folders under ``base`` of this host's workers that are not running."""
    host = host or _host()
    removed = []
    for folder in base.glob(f"{PREFIX}{host}-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def claim(base: Path | None = None) -> Path:
    """This process's scratch folder, made the temporary folder of it and of its children."""
    base = Path(base or tempfile.gettempdir())
    for folder in remove_dead(base):
        log.warning("removed the temporary files of a worker that did not stop: %s", folder)
    own = base / f"{PREFIX}{_host()}-{os.getpid()}"
    own.mkdir(mode=0o700, exist_ok=True)
    tempfile.tempdir = str(own)
    os.environ["TMPDIR"] = str(own)
    # Also at the interpreter's exit (Celery's warm shutdown ends with one); only in this process,
    # not in a forked pool child that inherited the handler.
    atexit.register(release, own)
    return own


def release(own: Path | None) -> None:
    """Remove ``own`` if this process made it (a pool child inherits the handlers, not the folder)."""
    if own is not None and own.name.endswith(f"-{os.getpid()}"):
        shutil.rmtree(own, ignore_errors=True)


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(path)
    return int(st.f_bavail * st.f_frsize)


def out_of_room(exc: BaseException) -> bool:
    """True when ``exc`` says the disk is full, or is an internal error (not voxbatch's own
    verdict) raised while the temporary folder's filesystem is nearly full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    if isinstance(exc, VoxbatchError):
        return False
    try:
        return free_bytes(tempfile.gettempdir()) < LOW_ROOM_BYTES
    except OSError:
        return False


def full_is_transient(fn: F) -> F:
    """A task body whose failure for want of temporary room raises ``ScratchFull`` (retried)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, TransientError) or not out_of_room(exc):
                raise
            where = tempfile.gettempdir()
            with_room = free_bytes(where) // (1024 * 1024)
            raise ScratchFull(
                f"no room in the temporary folder {where} ({with_room} MB free): {exc!r}"
            ) from exc

    return wrapped  # type: ignore[return-value]
