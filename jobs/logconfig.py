"""One logging setup per process; every line of pipeline code names its job id itself."""

from __future__ import annotations

import logging
import os
import sys

CLI_FORMAT = "voxbatch: %(levelname)s: %(message)s"
PROCESS_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False, stream: object = None, fmt: str = PROCESS_FORMAT) -> None:
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("VOXBATCH_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    )
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(PROCESS_FORMAT if verbose else fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that talk at INFO about every request drown the job lines.
    for noisy in ("httpx", "botocore", "urllib3", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
