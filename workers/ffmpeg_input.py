"""What ffmpeg may open: a source as ffmpeg must see it, with its protocol and format whitelists.

User-controlled strings never reach ffmpeg as protocol URLs: local paths go in as
``file:/absolute/path`` with only the file and pipe protocols allowed, URLs only as http(s), and
only container formats that hold audio may be opened (no playlists, no concat lists, no images).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jobs.errors import InputError, StorageUnavailable, VoxbatchError

LOCAL_PROTOCOLS = "file,pipe"
URL_PROTOCOLS = "http,https,tcp,tls,crypto"
# Demuxers of containers and raw streams that carry audio. Anything else (image2, hls, concat,
# playlists, subtitles, devices) is refused before it can open other files or URLs.
AUDIO_FORMATS = ",".join(
    [
        "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf",
        "dsf", "dts", "dtshd", "eac3", "flac", "flv", "gsm", "loas", "matroska", "mlp",
        "mov", "mp3", "mpc", "mpc8", "mpeg", "mpegts", "nut", "ogg", "oma", "rm", "tak",
        "truehd", "tta", "voc", "w64", "wav", "wv", "xwma",
    ]
)  # fmt: skip

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class FfmpegInput:
    """A source as ffmpeg must see it: a ``file:`` path or an http(s) URL, with its whitelist."""

    def __init__(self, url: str, protocols: str, name: str, path: Path | None) -> None:
        self.url = url
        self.protocols = protocols
        self.name = name
        self.path = path

    @classmethod
    def parse(cls, source: str) -> FfmpegInput:
        if not source:
            raise InputError("no recording was given")
        if _SCHEME.match(source):
            parts = urlsplit(source)
            # Presigned URLs carry credentials in the query: name the file by its path only.
            name = unquote(parts.path.rsplit("/", 1)[-1]) or parts.netloc
            if parts.scheme.lower() not in ("http", "https"):
                raise InputError(
                    f"{parts.scheme}:// sources are not supported; give a local file or an http(s) URL"
                )
            return cls(source, URL_PROTOCOLS, name, None)
        path = Path(source).expanduser().absolute()
        name = path.name or source
        if not path.exists():
            raise InputError(f"{source} does not exist")
        if path.is_dir():
            raise InputError(f"{name} is a directory, not an audio file")
        if not path.is_file():
            raise InputError(f"{name} is not a regular file")
        if path.stat().st_size == 0:
            raise InputError(f"{name} is empty")
        return cls("file:" + str(path), LOCAL_PROTOCOLS, name, path)

    def input_args(self) -> list[str]:
        return [
            "-protocol_whitelist", self.protocols,
            "-format_whitelist", AUDIO_FORMATS,
            "-i", self.url,
        ]  # fmt: skip

    def scrub(self, detail: str) -> str:
        """ffmpeg's message without the URL, whose query may hold a presigned signature."""
        return re.sub(r"\?\S*", "", detail.replace(self.url, self.name))

    def unreadable(self, detail: str) -> VoxbatchError:
        """Why ffmpeg could not open the source: transient where the server may answer later."""
        if self.path is None:
            # ffmpeg names any 5xx "Server returned 5XX Server Error reply": S3 under load answers
            # 503 SlowDown to a presigned GET, so the step must retry rather than fail the job.
            if re.search(r"Server returned 5|Connection refused|Connection reset|timed out", detail):
                return StorageUnavailable(f"{self.name} could not be fetched now: {detail}")
            if re.search(r"Server returned|Connection|resolve", detail):
                return InputError(f"{self.name} could not be fetched: {detail}")
        return InputError(f"{self.name} is not an audio or video file ffmpeg can read")
