"""voxbatch core: jobs, windows, planning, stitching, documents and storage.

Nothing here imports Celery, FastAPI or an HTTP client; workers/ and api/ depend on this package,
never the other way round. Times are float seconds from the start of the recording and spans are
half-open ``[start_s, end_s)``.
"""
