"""One error tree for voxbatch. Third-party errors are translated into it at the adapter boundary.

    VoxbatchError
    ├── PermanentError            retrying the same thing gives the same answer
    │   ├── InputError            the user's recording or options are unusable (exit 2 / HTTP 422)
    │   ├── NotFound              a job, window or stored object that does not exist
    │   ├── EngineRejected        the model server refused a request for a reason other than size
    │   └── JobCancelled          the job was cancelled while a step ran
    ├── WindowTooLarge            the server refused a window as too long or too big: split and retry
    │   ├── RepetitionLoop        the transcript degenerated into a loop twice: split and retry
    │   └── TranscriptCut         the transcript reached its token cap (words may be missing): split
    └── TransientError            a later attempt may succeed (retry with backoff)
        ├── EngineUnavailable     connection errors, timeouts, 5xx, 429
        ├── TooBusy               a limit on concurrent work was reached (HTTP 429, Retry-After)
        ├── StorageUnavailable    object storage did not answer
        └── DatabaseUnavailable   the database did not answer, dropped the connection, had no free
                                  connection in time, or refused a transaction to be run again

Every message is one sentence a user can act on: it ends up in a CLI line or a job's ``error``.
"""

from __future__ import annotations


class VoxbatchError(Exception):
    """Base of every error voxbatch raises on purpose."""


class PermanentError(VoxbatchError):
    """Retrying the same request gives the same answer."""


class InputError(PermanentError):
    """The recording or the options cannot become a document."""


class NotFound(PermanentError):
    """A job, window or stored object that does not exist."""


class EngineRejected(PermanentError):
    """The model server refused a request (a 4xx that is not about size or duration)."""


class JobCancelled(PermanentError):
    """The job was cancelled while a step was running."""


class WindowTooLarge(VoxbatchError):
    """The server refused a window as too long or too large; the caller splits it and retries.

    ``max_duration_s`` is the limit the server named, when it named one, so that later windows
    can be cut to fit before they are sent.
    """

    def __init__(self, message: str, max_duration_s: float | None = None) -> None:
        super().__init__(message)
        self.max_duration_s = max_duration_s


class RepetitionLoop(WindowTooLarge):
    """The transcript kept repeating itself even with a repetition penalty."""


class TranscriptCut(WindowTooLarge):
    """The transcript reached its token cap, so its end may be missing; shorter audio fits.

    ``text`` is what the model did say, kept when cutting smaller does not help."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


class TransientError(VoxbatchError):
    """A later attempt may succeed."""


class EngineUnavailable(TransientError):
    """The model server did not answer, timed out or answered 5xx/429."""


class StorageUnavailable(TransientError):
    """Object storage did not answer."""


class DatabaseUnavailable(TransientError):
    """The database could not do it now (``jobs.db.transient``): the same transaction may pass later."""


class TooBusy(TransientError):
    """A limit on concurrent work was reached (HTTP 429): try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 30.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Conflict(PermanentError):
    """The request contradicts what exists: a name taken, a job still running (HTTP 409)."""
