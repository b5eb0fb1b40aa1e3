"""The autoscaling policy: from a pool's load to its replicas (pure; time passed in).

The load is what the operator can see and an HPA on a queue-length metric cannot: the messages
waiting in every priority list of the pool's queues, the tasks its workers are running, and
which workers hold any task at all (running, or prefetched and waiting in the worker).

The target is **tasks per pool slot** (a slot is one unit of ``concurrency``): the pool wants
``ceil((waiting + running) / (concurrency * targetTasksPerSlot))`` replicas. At the default of 1
that is enough workers to start everything waiting at once, up to ``maxReplicas``. A target in
slots stays right when ``concurrency`` changes, and it counts running tasks, so a fleet busy with
long tasks and an empty queue keeps its size. Prefetched tasks do not ask for more workers
(nobody else can take them) but keep the workers that hold them: the pool is never scaled below
its count of busy workers, and :func:`deletion_costs` makes the idle ones go first.

From there it is the HPA's algorithm (``pkg/controller/podautoscaler``): no change within a
tolerance of the target; the lowest recommendation of the scale-up window and the highest of the
scale-down window bound the change; per period a direction may move by the larger of a percent
and a pod step; ``minReplicas``/``maxReplicas`` clamp the result. Missing data never shrinks a
pool: with the broker unreadable the replicas hold (or rise to ``fallbackReplicas``), with the
workers' tasks unknown the pool does not scale down.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from celery_operator.spec import Autoscaling

UP: Final = "up"
DOWN: Final = "down"
NONE: Final = "none"


class Reason:
    """Why a decision came out as it did: a closed set, so a metric label stays small."""

    LOAD: Final = "Load"
    """Replicas follow the load (up or down)."""
    ACTIVATION: Final = "Activation"
    """A pool at zero got work above ``activationBacklog``."""
    IDLE: Final = "Idle"
    """No work at all: down towards ``minReplicas`` (zero if allowed)."""
    WITHIN_TOLERANCE: Final = "WithinTolerance"
    STABILIZING: Final = "Stabilizing"
    """A recommendation in the stabilization window holds the replicas for now."""
    STEP_LIMIT: Final = "StepLimit"
    MAX_REPLICAS: Final = "MaxReplicas"
    MIN_REPLICAS: Final = "MinReplicas"
    BUSY_WORKERS: Final = "BusyWorkers"
    """Fewer replicas would remove a worker that holds tasks."""
    TASKS_UNKNOWN: Final = "TasksUnknown"
    """The workers could not be asked what they hold: no scale-down on missing data."""
    BROKER_UNREADABLE: Final = "BrokerUnreadable"
    FALLBACK: Final = "Fallback"


@dataclass(frozen=True)
class Load:
    """What one poll saw of a pool."""

    backlog: int | None
    """Messages waiting in the pool's queues, every priority list counted; None: unreadable."""
    running: int | None
    """Tasks the pool's workers are executing; None: the workers could not be asked."""
    held: int = 0
    """Tasks prefetched by the workers and not started yet (for status; see ``busy_workers``)."""
    busy_workers: int = 0
    """Workers holding at least one task, running or prefetched."""
    unacked: int | None = None
    """Messages of the pool's queues that the broker delivered and has no ack for yet
    (RabbitMQ's management API; prefetched tasks, and running ones with late acks); None where
    the broker does not tell (Redis). Counted as work in flight, at least as much as
    ``running``: a pool never shrinks below what the broker says its workers hold."""


@dataclass(frozen=True)
class History:
    """What the policy remembers of a pool between polls (the HPA keeps the same, in memory)."""

    recommendations: tuple[tuple[datetime, int], ...] = ()
    changes: tuple[tuple[datetime, int], ...] = ()
    """Replica changes the autoscaler made, as (when, +/- count), for the step limits."""
    unreadable_since: datetime | None = None


def fresh_history(current: int, now: datetime) -> History:
    """The memory of a pool first seen now: its current size counts as a recommendation, so
    after an operator restart a pool waits a whole scale-down window before it shrinks."""
    return History(recommendations=((now, current),))


@dataclass(frozen=True)
class Decision:
    replicas: int
    current: int
    reason: str
    message: str
    history: History
    recommended: int
    """The load's recommendation before stabilization, step limits and clamping."""
    limited: str | None = None
    """``MaxReplicas`` or ``MinReplicas`` when the load asked for more or fewer than allowed."""

    @property
    def direction(self) -> str:
        if self.replicas > self.current:
            return UP
        return DOWN if self.replicas < self.current else NONE


def decide(
    load: Load,
    current: int,
    concurrency: int,
    policy: Autoscaling,
    history: History,
    now: datetime,
) -> Decision:
    """The replicas a pool should have now, the reason, and the memory for the next poll."""
    if load.backlog is None:
        return _unreadable(current, policy, history, now)
    history = dataclasses.replace(history, unreadable_since=None)
    capacity = concurrency * policy.target_tasks_per_slot
    running = load.running or 0
    in_flight = running if load.unacked is None else max(running, load.unacked)
    work = load.backlog + in_flight
    summary = f"{load.backlog} waiting + {running} running"
    if load.unacked is not None:
        summary += f" ({load.unacked} unacked)"

    if current == 0:
        if load.backlog > policy.activation_backlog:
            raw, reason = max(1, math.ceil(work / capacity)), Reason.ACTIVATION
            why = f"{summary}, above activationBacklog {policy.activation_backlog}"
        else:
            raw, reason = 0, Reason.IDLE
            why = f"{summary}, not above activationBacklog {policy.activation_backlog}"
    elif work == 0:
        raw, reason, why = 0, Reason.IDLE, "no task waiting or running"
    else:
        ratio = work / (current * capacity)
        if abs(ratio - 1) <= policy.tolerance_percent / 100 + 1e-9:  # "within" includes it
            raw, reason = current, Reason.WITHIN_TOLERANCE
            why = f"{summary} is within {policy.tolerance_percent}% of the target"
        else:
            raw, reason = math.ceil(work / capacity), Reason.LOAD
            why = f"{summary} over {capacity:g} per replica"
    if load.running is None and current > 0 and raw < current:
        raw, reason = current, Reason.TASKS_UNKNOWN
        why = f"{summary}; the workers' tasks are unknown, so no scale-down"
    if raw < load.busy_workers:
        raw, reason = load.busy_workers, Reason.BUSY_WORKERS
        why = f"{summary}; {load.busy_workers} workers hold tasks and must stay"

    desired, stable_reason, history = _stabilize(raw, current, policy, history, now)
    if stable_reason:
        reason, why = stable_reason, f"{why}; held by the stabilization window"
    desired, step_reason = _limit_steps(desired, current, policy, history, now)
    if step_reason:
        reason, why = step_reason, f"{why}; step limited to {desired}"

    limited = None
    if raw > policy.max_replicas:
        limited = Reason.MAX_REPLICAS
    elif raw < policy.min_replicas:
        limited = Reason.MIN_REPLICAS
    clamped = min(max(desired, policy.min_replicas), policy.max_replicas)
    if clamped != desired:
        bound = "maxReplicas" if clamped < desired else "minReplicas"
        reason = Reason.MAX_REPLICAS if clamped < desired else Reason.MIN_REPLICAS
        why = f"{why}; {bound} is {clamped}"
    if clamped != current:
        history = dataclasses.replace(history, changes=(*history.changes, (now, clamped - current)))
    return Decision(
        replicas=clamped,
        current=current,
        reason=reason,
        message=f"{current} → {clamped}: {why}" if clamped != current else f"{current}: {why}",
        history=history,
        recommended=raw,
        limited=limited,
    )


def _unreadable(current: int, policy: Autoscaling, history: History, now: datetime) -> Decision:
    since = history.unreadable_since or now
    history = dataclasses.replace(history, unreadable_since=since)
    waited = (now - since).total_seconds()
    fallback = policy.fallback_replicas
    if fallback is not None and waited >= policy.fallback_after_seconds and current < fallback:
        return Decision(
            replicas=fallback,
            current=current,
            reason=Reason.FALLBACK,
            message=f"{current} → {fallback}: the broker has been unreadable for {waited:.0f}s; "
            "fallbackReplicas",
            history=_changed(history, now, fallback - current, policy),
            recommended=fallback,
        )
    # Hold, within the bounds the user may have changed meanwhile.
    held = min(max(current, policy.min_replicas), policy.max_replicas)
    return Decision(
        replicas=held,
        current=current,
        reason=Reason.BROKER_UNREADABLE,
        message=f"{current}: the broker cannot be read (for {waited:.0f}s); holding replicas"
        if held == current
        else f"{current} → {held}: the broker cannot be read; holding within min and max",
        history=_changed(history, now, held - current, policy) if held != current else history,
        recommended=current,
    )


def _changed(history: History, now: datetime, change: int, policy: Autoscaling) -> History:
    """``history`` with a replica change made now; changes older than both periods dropped."""
    period = timedelta(
        seconds=max(policy.scale_up.period_seconds, policy.scale_down.period_seconds)
    )
    kept = tuple((t, d) for t, d in history.changes if now - t < period)
    return dataclasses.replace(history, changes=(*kept, (now, change)))


def _stabilize(
    raw: int, current: int, policy: Autoscaling, history: History, now: datetime
) -> tuple[int, str | None, History]:
    up = timedelta(seconds=policy.scale_up.stabilization_window_seconds)
    down = timedelta(seconds=policy.scale_down.stabilization_window_seconds)
    kept = tuple((t, r) for t, r in history.recommendations if now - t < max(up, down))
    upper = lower = raw
    for at, past in kept:
        if now - at < up:
            upper = min(upper, past)
        if now - at < down:
            lower = max(lower, past)
    desired = min(max(current, upper), lower)
    history = dataclasses.replace(history, recommendations=(*kept, (now, raw)))
    return desired, Reason.STABILIZING if desired != raw else None, history


def _limit_steps(
    desired: int, current: int, policy: Autoscaling, history: History, now: datetime
) -> tuple[int, str | None]:
    if desired > current:
        rules = policy.scale_up
        window = timedelta(seconds=rules.period_seconds)
        added = sum(d for t, d in history.changes if d > 0 and now - t < window)
        start = max(current - added, 0)
        limit = max(
            math.ceil(start * (1 + rules.max_step_percent / 100)),
            start + rules.max_step_pods,
            start + 1,
        )
        return (limit, Reason.STEP_LIMIT) if desired > limit else (desired, None)
    if desired < current:
        rules = policy.scale_down
        window = timedelta(seconds=rules.period_seconds)
        removed = sum(-d for t, d in history.changes if d < 0 and now - t < window)
        start = current + removed
        limit = min(
            math.floor(start * (1 - rules.max_step_percent / 100)),
            start - rules.max_step_pods,
        )
        return (limit, Reason.STEP_LIMIT) if desired < limit else (desired, None)
    return desired, None


@dataclass(frozen=True)
class LastScale:
    at: datetime
    before: int
    after: int
    reason: str
    message: str


@dataclass(frozen=True)
class PoolReport:
    """One autoscaled pool as status shows it: its last load, decision and replica change."""

    name: str
    load: Load | None
    replicas: int
    decision: Decision | None
    last_scale: LastScale | None = None


def deletion_cost(held: int | None) -> int:
    """``controller.kubernetes.io/pod-deletion-cost`` of a worker holding ``held`` tasks.

    The ReplicaSet controller removes pods of the lowest cost first (after those not ready). An
    idle worker costs 0; a ready worker that did not answer (a solo pool busy with a task, or a
    hung one) costs 1; a busy one 1 + its tasks, so the busiest go last.
    """
    if held is None:
        return 1
    return 0 if held == 0 else 1 + held
