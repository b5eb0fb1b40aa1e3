"""The adapter that receives a broker's Celery events (``celery events``, as Flower does).

One daemon thread per *broker*, not per cluster, holds a ``celery.events.Receiver`` and hands
each event to the cluster it belongs to, whose :class:`taskevents.TaskEvents` folds it into the
operator's Prometheus metrics. Every worker on a broker publishes to the same event exchange, so
the receiver sees other clusters' workers and workers outside Kubernetes too; an event counts
only for the cluster whose worker sent it:

* a worker's events carry its node name ``<pool>@<pod>``. The node belongs to the cluster that
  claimed it (the reconcile claims the worker pods it lists), else to the cluster whose pod name
  it has: ``<cluster>-worker-<pool>-<template hash>-<suffix>``. Two clusters of one name in two
  namespaces on one broker are told apart only by claims; until then their events count for
  nobody;
* ``task-sent`` comes from a producer, not a worker: it counts for every cluster with a pool
  that consumes its queue.

The thread reconnects by itself (with a growing pause) while the broker is away, and stops
within a second when the last cluster unsubscribes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery

from celery_operator import metrics
from celery_operator.taskevents import Limits, TaskEvents

log = logging.getLogger(__name__)

DEFAULT_LIMITS: Final = Limits()
STOP_WITHIN_SECONDS: Final = 1.0
MAX_RECONNECT_PAUSE_SECONDS: Final = 4.0
"""The longest wait between two reconnects of the event receiver while its broker is down: as
long as Celery's workers wait between theirs (2 s, then 4 s), so that events (workers online,
task counts) come back with the workers after an outage, not up to 30 s later. One connection
attempt per broker every 4 s costs a down broker nothing worth saving."""

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


@dataclass
class _Route:
    events: TaskEvents
    pools: frozenset[str]
    pool_of_queue: Mapping[str, str]


def cluster_of_pod(pod: str, pool: str) -> str | None:
    """The CeleryCluster whose worker Deployment of ``pool`` made ``pod``, by its name
    (``<cluster>-worker-<pool>-<template hash>-<suffix>``); None for any other name."""
    parts = pod.rsplit("-", 2)
    tail = f"-worker-{pool}"
    if len(parts) != 3 or not parts[0].endswith(tail):
        return None
    return parts[0][: -len(tail)] or None


class BrokerEvents:
    """Receives one broker's events in a thread of its own, for every cluster subscribed."""

    def __init__(
        self,
        app: Celery,
        name: str,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.name = name
        """How logs name the broker: scheme, host and port, never credentials."""
        self.limits = limits
        self.clock = clock
        self.received = 0
        self.dropped = 0
        """Events that counted for no cluster (another cluster's, a worker outside Kubernetes)."""
        self.connected = False
        self._lock = threading.Lock()
        self._routes: dict[ClusterKey, _Route] = {}
        self._claims: dict[str, ClusterKey] = {}
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread: threading.Thread | None = None

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(self, key: ClusterKey, pool_of_queue: Mapping[str, str]) -> None:
        """Count this cluster's events (idempotent; a changed pool layout replaces the route and
        keeps what was counted)."""
        pools = frozenset(pool_of_queue.values())
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                sink = _Sink(*key)
                events = TaskEvents(sink, dict(pool_of_queue), self.limits)
                self._routes[key] = _Route(events, pools, dict(pool_of_queue))
            elif route.pool_of_queue != pool_of_queue:
                route.events.pool_of_queue = dict(pool_of_queue)
                route.pools, route.pool_of_queue = pools, dict(pool_of_queue)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"events {self.name}", daemon=True
            )
            self._thread.start()

    def claim(self, key: ClusterKey, nodes: Iterable[str]) -> None:
        """These worker nodes are ``key``'s (from its pod list): replaces its earlier claims."""
        wanted = set(nodes)
        with self._lock:
            self._claims = {n: k for n, k in self._claims.items() if k != key or n in wanted}
            self._claims.update(dict.fromkeys(wanted, key))

    def unsubscribe(self, key: ClusterKey) -> None:
        """Stop counting for ``key``: once this returns, none of its metrics is touched again."""
        with self._lock:
            self._routes.pop(key, None)
            self._claims = {n: k for n, k in self._claims.items() if k != key}

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._routes)

    def online(self, key: ClusterKey) -> dict[str, int]:
        """Workers online per pool of ``key``, by their heartbeats."""
        with self._lock:
            route = self._routes.get(key)
            return route.events.online(self.clock()) if route else {}

    def tracked(self, key: ClusterKey) -> int:
        with self._lock:
            route = self._routes.get(key)
            return route.events.tracked if route else 0

    # --- the receiver thread -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_WITHIN_SECONDS + 2)

    def _handle(self, event: Mapping[str, Any]) -> None:
        now = self.clock()
        with self._lock:
            self.received += 1
            routes = self._targets(event)
            if not routes:
                self.dropped += 1
            for route in routes:
                route.events.feed(event, now)

    def _targets(self, event: Mapping[str, Any]) -> list[_Route]:
        if event.get("type") == "task-sent":
            queue = str(event.get("queue", ""))
            return [r for r in self._routes.values() if queue in r.pool_of_queue]
        node = str(event.get("hostname", ""))
        claimed = self._claims.get(node)
        if claimed is not None:
            route = self._routes.get(claimed)
            return [route] if route is not None else []
        pool, _, pod = node.partition("@")
        cluster = cluster_of_pod(pod, pool) if pod else None
        if cluster is None:
            return []
        found = [r for (_, name), r in self._routes.items() if name == cluster and pool in r.pools]
        return found if len(found) == 1 else []  # same name in two namespaces: wait for claims

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
                log.warning(
                    "events of %s: %s; reconnecting in %.0fs",
                    self.name,
                    type(error).__name__,
                    pause,
                )
            finally:
                self.connected = False
                self._receiver = None
            self._stop.wait(pause)
            pause = min(pause * 2, MAX_RECONNECT_PAUSE_SECONDS)


def export_online(key: ClusterKey, pools: Iterable[str], online: Mapping[str, int]) -> None:
    """Set the workers-online gauge of each pool (0 for the silent ones)."""
    for pool in pools:
        metrics.WORKERS_ONLINE.labels(*key, pool).set(online.get(pool, 0))
