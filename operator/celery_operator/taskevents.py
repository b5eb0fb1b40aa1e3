"""Task metrics from Celery's event stream (pure: no I/O; the receiver is ``eventstream.py``).

Celery workers started with ``--task-events`` (the operator adds it) publish ``task-received``,
``task-started``, ``task-succeeded``, ``task-failed``, ``task-retried``, ``task-revoked`` and
``task-rejected``, and a ``worker-heartbeat`` every 2 s; producers with
``task_send_sent_event`` add ``task-sent``. :class:`TaskEvents` folds them into what Prometheus
wants: counts by pool, task name and state, runtimes, queue waits, and workers online.

Only ``task-sent`` and ``task-received`` name the task; later events carry its id alone. The
ids of tasks under way are kept in a bounded LRU (``Limits.tasks_tracked``): past it the oldest
are forgotten and their later events counted under the name ``unknown``. Task names are bounded
too (``Limits.task_names``; past it, ``other``), so neither memory nor series grow with traffic.
Labels are the pool (from the worker's node name ``<pool>@<pod>``), never the pod.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

STATES: Final = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)
"""The task states of Celery's event reference, as metric label values."""
FINAL_STATES: Final = frozenset({"succeeded", "failed", "revoked", "rejected"})
UNKNOWN: Final = "unknown"
OTHER: Final = "other"
HEARTBEAT_GRACE_SECONDS: Final = 2.0
"""A worker is online while its last heartbeat is younger than twice its frequency plus this."""


@dataclass(frozen=True)
class Limits:
    tasks_tracked: int = 10_000
    """Tasks under way whose name and times are remembered (about 200 bytes each)."""
    task_names: int = 500
    """Distinct task names per cluster with series of their own; the rest count as ``other``."""


class Sink(Protocol):
    """Where the observations go (Prometheus metrics in the operator, a list in tests)."""

    def count(self, pool: str, task: str, state: str) -> None: ...

    def runtime(self, pool: str, task: str, seconds: float) -> None: ...

    def wait(self, pool: str, task: str, seconds: float) -> None: ...


@dataclass
class _Task:
    name: str
    sent: float | None = None
    received: float | None = None


@dataclass
class _Worker:
    pool: str
    seen: float
    freq: float


@dataclass
class TaskEvents:
    """One cluster's event stream, folded. ``feed`` each event; ``online`` for the gauge."""

    sink: Sink
    pool_of_queue: Mapping[str, str] = field(default_factory=dict)
    """Which pool consumes a queue: ``task-sent`` comes from a producer, not a worker."""
    limits: Limits = field(default_factory=Limits)
    _tasks: OrderedDict[str, _Task] = field(default_factory=OrderedDict)
    _names: set[str] = field(default_factory=set)
    _workers: dict[str, _Worker] = field(default_factory=dict)

    def feed(self, event: Mapping[str, Any], now: float) -> None:
        """Fold one event; ``now`` is the operator's clock (heartbeats are aged on it)."""
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self._worker(kind, event, now)
            return
        if not kind.startswith("task-"):
            return
        state = kind[len("task-") :]
        if state not in STATES:
            return
        task_id = str(event.get("uuid", ""))
        task = self._task(task_id, event)
        stamp = _number(event.get("timestamp"))
        if state == "sent":
            pool = self.pool_of_queue.get(str(event.get("queue", "")), UNKNOWN)
            task.sent = stamp
        else:
            pool = _pool(event.get("hostname"))
        self.sink.count(pool, task.name, state)
        if state == "received":
            task.received = stamp
        elif state == "started" and stamp is not None:
            since = task.sent if task.sent is not None else task.received
            if since is not None:
                self.sink.wait(pool, task.name, max(0.0, stamp - since))
        elif state == "succeeded":
            runtime = _number(event.get("runtime"))
            if runtime is not None:
                self.sink.runtime(pool, task.name, max(0.0, runtime))
        if state in FINAL_STATES:
            self._tasks.pop(task_id, None)

    def online(self, now: float) -> dict[str, int]:
        """Workers online per pool, by their heartbeats; the silent ones are forgotten."""
        self._workers = {
            host: w
            for host, w in self._workers.items()
            if now - w.seen <= 2 * w.freq + HEARTBEAT_GRACE_SECONDS
        }
        counts: dict[str, int] = {}
        for worker in self._workers.values():
            counts[worker.pool] = counts.get(worker.pool, 0) + 1
        return counts

    @property
    def tracked(self) -> int:
        """Tasks under way remembered now (at most ``limits.tasks_tracked``)."""
        return len(self._tasks)

    def _task(self, task_id: str, event: Mapping[str, Any]) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            name = event.get("name")
            task = _Task(self._name(str(name)) if name else UNKNOWN)
            if task_id:
                self._tasks[task_id] = task
                while len(self._tasks) > self.limits.tasks_tracked:
                    self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task_id)
            if task.name == UNKNOWN and event.get("name"):
                task.name = self._name(str(event["name"]))
        return task

    def _name(self, name: str) -> str:
        if name in self._names:
            return name
        if len(self._names) >= self.limits.task_names:
            return OTHER
        self._names.add(name)
        return name

    def _worker(self, kind: str, event: Mapping[str, Any], now: float) -> None:
        host = str(event.get("hostname", ""))
        if not host:
            return
        if kind == "worker-offline":
            self._workers.pop(host, None)
            return
        freq = _number(event.get("freq")) or 2.0
        self._workers[host] = _Worker(_pool(host), now, freq)


def _pool(hostname: object) -> str:
    """The pool of a worker node name ``<pool>@<pod>`` (the operator names them so)."""
    text = str(hostname or "")
    return text.split("@", 1)[0] if "@" in text else UNKNOWN


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
