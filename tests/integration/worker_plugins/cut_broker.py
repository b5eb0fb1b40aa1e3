"""A remote-control command that cuts this worker off its broker for good, while the broker stays
up for everyone else: a wedged connection, on demand.

Once the reply is on its way, every socket of the main process connected to the broker's port is
shut down (the consumer sees its connection lost, as after a network fault), and from then on
redis-py's connect raises ``ConnectionRefusedError`` in this process, so every reconnect fails.
Pool processes were forked earlier and keep theirs; only the main process is cut off.
"""

from __future__ import annotations

import errno
import gc
import socket
from typing import Any

import redis.connection
from celery.worker.control import control_command


@control_command()  # type: ignore[untyped-decorator]
def cut_broker(state: Any) -> dict[str, str]:
    consumer = state.consumer
    port = int(consumer.connection.port)

    def refuse(self: Any, *args: Any, **kwargs: Any) -> socket.socket:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused by the cut_broker test plugin")

    redis.connection.Connection._connect = refuse  # type: ignore[attr-defined]
    consumer.timer.call_after(0.2, _shut_sockets_to, (port,))
    return {"ok": f"cut off from port {port}"}


def _shut_sockets_to(port: int) -> None:
    for obj in gc.get_objects():
        if not isinstance(obj, socket.socket) or obj.fileno() < 0:
            continue
        try:
            if obj.family in (socket.AF_INET, socket.AF_INET6) and obj.getpeername()[1] == port:
                obj.shutdown(socket.SHUT_RDWR)
        except OSError:
            continue  # not connected (a listening or closed socket)
