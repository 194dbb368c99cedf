"""The processes that do the work: ffmpeg audio, engines, the Celery app and its thin tasks."""
