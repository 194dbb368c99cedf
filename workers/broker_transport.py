"""kombu's Redis transport, with the one fault that wedged gpu workers after a Redis restart fixed.

kombu 5.7 / Celery 5.7, when a worker's consumer loses Redis
(``Consumer.on_connection_error_after_connected``):
``connection.collect()`` closes the default channel and then detaches the transport from its
connection (``transport.client = None``); a channel whose close was cut short by the dead socket
(``_brpop_read`` raised before the channel was marked closed) is closed a second time by
``connection.close()``. That second close restores the unacked messages, builds a Redis client from
``transport.client``, and raises ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
``ignore_errors`` lets only connection and channel errors through, so the AttributeError ends the
consumer: Celery logs ``Unrecoverable error`` and stops the worker, whose stop then waits on the
running windows (issue 21: both gpu workers alive and idle after the soak's 4th Redis restart).

Here a channel whose transport was already detached answers with a Redis ``ConnectionError``, which
is what it is: the close is ignored like any other close on a lost connection, and the consumer
reconnects. The messages it could not restore stay in Redis's unacked set (restored after the
visibility timeout, as for any worker that loses Redis while running a task, unless the sweep drops
them first because their work is done: ``workers.unacked``); the window they carry is sent again by
the database (its lease and the sweep), not by that message.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


# ``broker_transport`` (workers.celery_app): used for every connection to the broker a Celery app
# of voxbatch makes, workers and publishers alike.
REDIS_TRANSPORT = f"{__name__}:Transport"
