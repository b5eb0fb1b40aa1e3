"""Hung-worker verdicts (pure): which workers are hung, which are only busy, and whether acting
is safe. Time is passed in; the remote-control I/O that produces the replies lives elsewhere.

Each monitoring cycle broadcasts ``ping``, ``stats`` and ``active`` once to all workers and maps
the replies to pods by node name. From one cycle to the next, ``remember`` keeps what a verdict
needs: how many cycles in a row a worker has not answered, when its processed count last moved,
and since when (on the operator's clock) each of its tasks has been running. A worker's own
timestamps are never compared with ours: its clock may differ and its ``time_start`` is its
monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

MASS_FAILURE_SHARE: Final = 0.5
"""When at least this share of the workers that answered last cycle fall silent at once, the
broker or the network is the problem, not the workers: restarting them cannot help."""


class Kind(StrEnum):
    """What a worker is, this cycle. Only UNRESPONSIVE and STUCK are hung."""

    HEALTHY = "Healthy"
    BUSY = "Busy"
    STARTING = "Starting"
    UNRESPONSIVE = "Unresponsive"
    STUCK = "Stuck"


HUNG: Final = frozenset({Kind.UNRESPONSIVE, Kind.STUCK})


@dataclass(frozen=True)
class Reply:
    """A worker's answer to one cycle: from ``stats`` its count of tasks started (``total``) and
    pool size (None when
    only ``ping`` or ``active`` reached it in time), from ``active`` the ids of its tasks."""

    processed: int | None
    slots: int | None
    active: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Memory:
    """What the monitor remembers about one worker pod between cycles."""

    missed: int = 0
    silent_since: datetime | None = None
    """The first cycle of the current run of missed ones."""
    answered_ever: bool = False
    processed: int | None = None
    progress_at: datetime | None = None
    task_since: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A pool's hung-worker settings (``spec.workers[].hungWorkers``)."""

    unresponsive_cycles: int
    stuck_seconds: int
    startup_seconds: int
    min_silence_seconds: int = 0
    """A silence shorter than this is left to the kubelet: with a liveness probe, a worker whose
    main loop stops is restarted by the kubelet within the probe's window, so the operator acts
    only when that did not help (or when there is no probe)."""


@dataclass(frozen=True)
class Verdict:
    """One worker's verdict and the evidence for it, in words for an Event."""

    pod: str
    kind: Kind
    evidence: str

    @property
    def hung(self) -> bool:
        return self.kind in HUNG


def remember(previous: Memory | None, reply: Reply | None, now: datetime) -> Memory:
    """Fold one cycle's reply (None: no answer) into what is remembered about a worker."""
    before = previous or Memory()
    if reply is None:
        return Memory(
            missed=before.missed + 1,
            silent_since=before.silent_since or now,
            answered_ever=before.answered_ever,
            processed=before.processed,
            progress_at=before.progress_at,
            task_since=before.task_since,
        )
    processed = before.processed if reply.processed is None else reply.processed
    moved = before.processed is None or processed != before.processed
    return Memory(
        missed=0,
        answered_ever=True,
        processed=processed,
        progress_at=now if moved or before.progress_at is None else before.progress_at,
        task_since={task: before.task_since.get(task, now) for task in reply.active},
    )


def judge(
    pod: str,
    memory: Memory,
    reply: Reply | None,
    policy: Policy,
    *,
    backlog: int,
    pod_age: timedelta,
    now: datetime,
) -> Verdict:
    """The verdict on one worker, from what is remembered (``remember`` already applied).

    * UNRESPONSIVE: no answer for ``unresponsive_cycles`` cycles in a row, from a worker that has
      answered before or has had its whole startup time to do so.
    * STUCK: it answers, but every pool slot has run the same task for ``stuck_seconds``, no new
      task has started in that time (``stats``' ``total`` counts tasks as they start), and its
      queues have work waiting.
    * BUSY: long tasks that are not (yet) stuck, or stuck-looking ones with no backlog behind them.
    """
    if reply is None:
        if not memory.answered_ever and pod_age.total_seconds() < policy.startup_seconds:
            return Verdict(pod, Kind.STARTING, "has not answered yet; still within its startup")
        silent = now - (memory.silent_since or now)
        if memory.missed >= policy.unresponsive_cycles and silent >= timedelta(
            seconds=policy.min_silence_seconds
        ):
            return Verdict(
                pod,
                Kind.UNRESPONSIVE,
                f"no answer to ping/stats/active for {memory.missed} cycles in a row "
                f"({_seconds(silent)})",
            )
        return Verdict(
            pod, Kind.HEALTHY, f"missed {memory.missed} cycle(s); the kubelet may restart it"
        )
    if not reply.active:
        return Verdict(pod, Kind.HEALTHY, "idle" if backlog == 0 else "consuming")
    limit = timedelta(seconds=policy.stuck_seconds)
    oldest = min(memory.task_since.values(), default=now)
    all_slots_busy = reply.slots is not None and len(reply.active) >= reply.slots
    slots_stuck = all_slots_busy and all(
        now - since >= limit for since in memory.task_since.values()
    )
    idle_for = now - (memory.progress_at or now)
    if slots_stuck and idle_for >= limit and backlog > 0:
        return Verdict(
            pod,
            Kind.STUCK,
            f"all {reply.slots} slot(s) running the same tasks for at least "
            f"{_seconds(now - oldest)}, no new task started for {_seconds(idle_for)} "
            f"(limit {policy.stuck_seconds}s), {backlog} message(s) waiting",
        )
    busy = f"{len(reply.active)}/{reply.slots or '?'} slot(s) busy"
    return Verdict(pod, Kind.BUSY, f"{busy}, the oldest task for {_seconds(now - oldest)}")


def mass_failure(answered_before: int, answered_now: int) -> bool:
    """Did most workers that answered last cycle fall silent at once? (Then act on nobody.)"""
    lost = answered_before - answered_now
    return answered_before >= 2 and lost >= 2 and lost >= MASS_FAILURE_SHARE * answered_before


@dataclass(frozen=True)
class Budget:
    """How many restarts a pool may make: per window, and at once (as a share of its replicas)."""

    max_restarts: int
    window_seconds: int
    max_unavailable_percent: int


def restarts_allowed(
    budget: Budget,
    *,
    recent: Sequence[datetime],
    replicas: int,
    unavailable: int,
    now: datetime,
) -> int:
    """How many hung workers may be restarted now.

    ``recent`` are the pool's past restarts (from status, so they survive an operator restart);
    ``unavailable`` counts its pods that are not ready right now, including those being replaced:
    a restart makes a pod unavailable until its successor is ready.
    """
    window = timedelta(seconds=budget.window_seconds)
    used = sum(1 for at in recent if now - at < window)
    at_once = max(1, math.floor(replicas * budget.max_unavailable_percent / 100))
    return max(0, min(budget.max_restarts - used, at_once - unavailable))


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


# --- one cycle's findings (the monitor makes them; status reads them) ---------------------

BROKER_UNREACHABLE: Final = "BrokerUnreachable"
MASS_UNRESPONSIVE: Final = "MassUnresponsive"


@dataclass(frozen=True)
class WorkerPod:
    """A worker pod as the monitor needs it (the reconcile reads it from the API)."""

    name: str
    uid: str
    pool: str
    running: bool
    """Its phase is Running: a Pending pod (unschedulable, pulling its image) is never judged."""
    ready: bool
    terminating: bool
    age: timedelta


@dataclass(frozen=True)
class Restart:
    pool: str
    pod: str
    uid: str
    verdict: Verdict


@dataclass(frozen=True)
class PoolHealth:
    name: str
    checked: int
    answering: int
    hung: tuple[Verdict, ...] = ()
    held: tuple[Verdict, ...] = ()
    """Hung workers left alone: Observe mode, or the restart budget is spent."""


@dataclass(frozen=True)
class HealthReport:
    """One cycle's findings for one cluster: for status, Events and the restarts to make."""

    at: datetime
    pools: tuple[PoolHealth, ...] = ()
    restarts: tuple[Restart, ...] = ()
    guard: str | None = None
    """Why nobody was judged this cycle (BROKER_UNREACHABLE, MASS_UNRESPONSIVE), or None."""
    message: str = ""
