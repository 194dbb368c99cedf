"""Loaded by a worker started with this folder first on PYTHONPATH
(tests/distributed/test_broker_restarts.py):
forces the fault kombu 5.7 hits by chance (workers/broker_transport.py), an error out of the consumer's
cleanup after the broker connection was lost that is not a connection error, so that Celery stops the
worker with "Unrecoverable error". Everything else in the process is the real worker."""

from celery.worker.consumer import consumer


def _cleanup_fails(self: object, exc: BaseException) -> None:
    raise AttributeError("'NoneType' object has no attribute 'hostname' (forced by the test)")


consumer.Consumer.on_connection_error_after_connected = _cleanup_fails  # type: ignore[method-assign,assignment]
