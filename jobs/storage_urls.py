"""Storage URLs: which store ``file:///dir`` or ``s3://bucket/prefix`` names, and opening it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from jobs.errors import InputError
from jobs.s3 import S3Storage
from jobs.storage import LocalStorage, Storage


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (bucket, key)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError(f"not an s3:// URL: {url}")
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        bucket, prefix = parse_s3_url(url)
        return S3Storage(bucket, prefix, endpoint_url=endpoint_url)
    if parsed.scheme == "":
        return LocalStorage(Path(url))
    raise InputError(f"VOXBATCH_STORAGE_URL must be file:///dir or s3://bucket/prefix, not {url}")
