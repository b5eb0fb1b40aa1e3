"""The adapter that receives each cluster's Celery events (``celery events``, as Flower does).

One daemon thread per cluster holds a ``celery.events.Receiver`` on the cluster's broker and
folds every event into a :class:`taskevents.TaskEvents`, whose sink is the operator's Prometheus
metrics. The thread reconnects by itself (with a growing pause) while the broker is away, and
stops within a second when the cluster goes away or its broker changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery

from celery_operator import metrics
from celery_operator.queues import KeyScheme
from celery_operator.remote import control_app
from celery_operator.spec import ClusterSpec
from celery_operator.taskevents import Limits, TaskEvents

log = logging.getLogger(__name__)

DEFAULT_LIMITS: Final = Limits()
STOP_WITHIN_SECONDS: Final = 1.0
MAX_RECONNECT_PAUSE_SECONDS: Final = 30.0

ClusterKey = tuple[str, str]


class _Sink:
    """TaskEvents' observations as the operator's metrics, for one cluster."""

    def __init__(self, namespace: str, cluster: str) -> None:
        self.namespace, self.cluster = namespace, cluster

    def count(self, pool: str, task: str, state: str) -> None:
        metrics.TASKS.labels(self.namespace, self.cluster, pool, task, state).inc()

    def runtime(self, pool: str, task: str, seconds: float) -> None:
        metrics.TASK_RUNTIME.labels(self.namespace, self.cluster, pool, task).observe(seconds)

    def wait(self, pool: str, task: str, seconds: float) -> None:
        metrics.TASK_WAIT.labels(self.namespace, self.cluster, pool, task).observe(seconds)


@dataclass(frozen=True)
class _Source:
    url: str
    keys: KeyScheme
    pool_of_queue: tuple[tuple[str, str], ...]


class EventStream:
    """Receives one cluster's events in a thread of its own."""

    def __init__(
        self,
        key: ClusterKey,
        app: Celery,
        pool_of_queue: Mapping[str, str],
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.app = app
        self.clock = clock
        self.events = TaskEvents(_Sink(*key), dict(pool_of_queue), limits)
        self.received = 0
        self.connected = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"events {key[0]}/{key[1]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        self._thread.join(timeout=STOP_WITHIN_SECONDS + 2)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def online(self) -> dict[str, int]:
        with self._lock:
            return self.events.online(self.clock())

    def _handle(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self.received += 1
            self.events.feed(event, self.clock())

    def _run(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    receiver = self.app.events.Receiver(
                        connection, handlers={"*": self._handle}, app=self.app
                    )
                    self._receiver = receiver
                    if self._stop.is_set():  # stop() came before it could see the receiver
                        break
                    self.connected = True
                    pause = 1.0
                    # Asks the workers for a heartbeat now: workers online show at once.
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as error:  # the broker went away: say so, wait, reconnect
                if self._stop.is_set():
                    break
                log.warning("events of %s/%s: %s; reconnecting in %.0fs", *self.key, error, pause)
            finally:
                self.connected = False
                self._receiver = None
            self._stop.wait(pause)
            pause = min(pause * 2, MAX_RECONNECT_PAUSE_SECONDS)


class EventStreams:
    """An event stream per cluster, started, replaced and stopped as the reconcile asks."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._streams: dict[ClusterKey, tuple[_Source, EventStream]] = {}

    def watch(self, key: ClusterKey, url: str, spec: ClusterSpec) -> None:
        """Make sure ``key``'s events are received from ``url`` (idempotent)."""
        pools = tuple(sorted({(q, p.name) for p in spec.workers for q in p.queues}))
        source = _Source(url, spec.broker.keys, pools)
        current = self._streams.get(key)
        if current is not None and current[0] == source:
            return
        self.forget(key)
        app = control_app(url, spec.broker.keys, timeout=2.0)
        stream = EventStream(key, app, dict(pools), self.limits)
        stream.start()
        self._streams[key] = (source, stream)

    def export(self, key: ClusterKey, pools: tuple[str, ...]) -> None:
        """Set the workers-online gauge of each pool (0 for the silent ones)."""
        current = self._streams.get(key)
        if current is None:
            return
        online = current[1].online()
        for pool in pools:
            metrics.WORKERS_ONLINE.labels(*key, pool).set(online.get(pool, 0))

    def stream(self, key: ClusterKey) -> EventStream | None:
        current = self._streams.get(key)
        return current[1] if current else None

    def forget(self, key: ClusterKey) -> None:
        current = self._streams.pop(key, None)
        if current is not None:
            current[1].stop()

    def stop(self) -> None:
        for key in list(self._streams):
            self.forget(key)
