"""A multipart/form-data request body read as it arrives, with the file part exposed as a stream.

Starlette's ``UploadFile`` spools every file to a temporary file before the handler runs: a
multi-GB recording would be written to local disk once, then read back and written to object
storage again. Here the body goes straight from the socket through python-multipart's push
parser into ``Storage.put_stream``: the file is written once, and memory holds about one network
chunk plus whatever the storage buffers (one S3 part per upload thread).

The form is read from a worker thread (storage writes block); each network chunk is fetched from
the event loop with ``next_chunk``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from python_multipart.multipart import MultipartParser, parse_options_header

from jobs.errors import InputError

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32


class UploadTooLarge(InputError):
    """The upload (or a JSON body) is over its size limit (HTTP 413)."""


class RequestTimedOut(InputError):
    """The client sent nothing for ``VOXBATCH_REQUEST_READ_TIMEOUT_S`` (HTTP 408)."""


def display_name(raw: str) -> str:
    """The name a user knows the file by, safe to store and show: last path component, no control
    characters, NFC, at most 200 characters. Storage keys use a stricter ASCII form."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")).strip()
    if name in ("", ".", ".."):
        return "recording"
    return name[:200]


class StreamingForm:
    """Parse the body on demand: ``to_file`` stops at the file part, ``read`` yields its bytes,
    ``drain`` reads the fields after it. ``fields`` holds the text fields seen so far."""

    def __init__(self, boundary: bytes, next_chunk: Callable[[], bytes], max_file_bytes: int) -> None:
        self._next_chunk = next_chunk
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )
        self._field_name = b""
        self._field_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None  # the current part's field name
        self._in_file = False
        self._file_started = False
        self._file_ended = False
        self._value = bytearray()
        self._out = bytearray()
        self._eof = False

    # --- parser callbacks -----------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._field_name = b""
        self._field_value = b""
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._field_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field_name.lower()] = self._field_value
        self._field_name = b""
        self._field_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._part = name
        if b"filename" in params and name == FILE_FIELD:
            if self._file_started:
                raise InputError("send one recording per request (the form has two 'file' fields)")
            self._file_started = True
            self._in_file = True
            self.filename = display_name(params[b"filename"].decode("utf-8", "replace"))
        elif b"filename" in params:
            raise InputError(f"unexpected file field {name[:100]!r}; the recording goes in 'file'")
        elif len(self.fields) >= MAX_FIELDS:
            raise InputError(f"the form has more than {MAX_FIELDS} fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise UploadTooLarge(
                    f"the recording is larger than the {self.max_file_bytes // 2**20} MB upload limit; "
                    "use POST /v1/uploads (presigned S3 multipart) or raise VOXBATCH_MAX_UPLOAD_MB"
                )
            self._out += data[start:end]
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InputError(f"form field {self._part!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._file_ended = True
        elif self._part is not None:
            self.fields[self._part] = self._value.decode("utf-8", "replace")
        self._part = None

    # --- reading --------------------------------------------------------------------------------

    def _pump(self) -> None:
        chunk = self._next_chunk()
        if not chunk:
            self._eof = True
            self._parser.finalize()
            return
        try:
            self._parser.write(chunk)
        except InputError:
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise InputError(f"the multipart body could not be parsed: {exc}") from exc

    def to_file(self) -> bool:
        """Read up to the start of the file part; False when the body has none."""
        while not self._file_started and not self._eof:
            self._pump()
        return self._file_started

    def read(self, size: int = -1) -> bytes:
        """The file part's next bytes (b"" at its end), for ``Storage.put_stream``."""
        want = size if size is not None and size > 0 else 1 << 20
        while len(self._out) < want and not self._file_ended and not self._eof:
            self._pump()
        data = bytes(self._out[:want])
        del self._out[:want]
        return data

    def drain(self) -> None:
        """Read the rest of the body (fields after the file)."""
        while not self._eof:
            self._pump()
        if self._file_started and not self._file_ended:
            raise InputError("the upload ended before the recording did (connection cut?)")
