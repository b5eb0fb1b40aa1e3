"""The CeleryCluster's status, computed from what was observed (pure; time passed in).

Status is written in one place, by the reconcile, from this module's output; Events are emitted
for the condition transitions it reports, and only for those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from celery_operator import health, scaling

AVAILABLE: Final = "Available"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
BROKER_REACHABLE: Final = "BrokerReachable"
WORKERS_HEALTHY: Final = "WorkersHealthy"
SCALING_ACTIVE: Final = "ScalingActive"
SCALING_LIMITED: Final = "ScalingLimited"
CONDITION_TYPES: Final = (
    AVAILABLE,
    PROGRESSING,
    DEGRADED,
    BROKER_REACHABLE,
    WORKERS_HEALTHY,
    SCALING_ACTIVE,
    SCALING_LIMITED,
)
"""Every condition type; the two Scaling ones only while some pool autoscales."""

FAILED_CREATE_FRESH_SECONDS: Final = 1200
"""How old a beat ``FailedCreate`` Event may be and still count: longer than the controllers'
longest retry backoff (their work queues' 1000 s), so a lasting failure never blinks off."""
RESTARTS_KEPT: Final = 20
"""Restarts of hung workers listed per pool in status: the newest, enough for any restart
budget (``maxRestarts`` is at most this)."""


class Reason:
    """Condition reasons: CamelCase words that ``kubectl describe`` and alerts can match on."""

    ALL_READY: Final = "AllReady"
    WORKERS_UNAVAILABLE: Final = "WorkersUnavailable"
    BEAT_UNAVAILABLE: Final = "BeatUnavailable"
    ROLLING_OUT: Final = "RollingOut"
    RECONCILED: Final = "Reconciled"
    INVALID_SPEC: Final = "InvalidSpec"
    BROKER_SECRET_MISSING: Final = "BrokerSecretMissing"
    BROKER_URL_INVALID: Final = "BrokerUrlInvalid"
    FLOWER_SECRET_MISSING: Final = "FlowerSecretMissing"
    NAME_CONFLICT: Final = "NameConflict"
    APPLY_FAILED: Final = "ApplyFailed"
    ROLLOUT_STALLED: Final = "RolloutStalled"
    FAILED_CREATE: Final = "FailedCreate"
    """The controller cannot create pods (admission, quota): its own reason, passed on."""
    AS_EXPECTED: Final = "AsExpected"
    BROKER_OK: Final = "BrokerReadable"
    BROKER_UNREACHABLE: Final = "BrokerUnreachable"
    BROKER_UNKNOWN: Final = "BrokerNotRead"
    ALL_ANSWERING: Final = "AllAnswering"
    HUNG_WORKERS: Final = "HungWorkers"
    NOT_CHECKED: Final = "NotChecked"
    WORKERS_UNREACHABLE: Final = health.BROKER_UNREACHABLE
    MASS_UNRESPONSIVE: Final = health.MASS_UNRESPONSIVE
    VALID_METRICS: Final = "ValidMetrics"
    NOT_POLLED: Final = "NotPolledYet"
    SCALING_BROKER_UNREADABLE: Final = scaling.Reason.BROKER_UNREADABLE
    AT_MAX: Final = scaling.Reason.MAX_REPLICAS
    AT_MIN: Final = scaling.Reason.MIN_REPLICAS
    WITHIN_RANGE: Final = "DesiredWithinRange"


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be carried out as written: it makes the cluster Degraded."""

    reason: str
    message: str


@dataclass(frozen=True)
class CreateFailure:
    """Why a controller could not create pods, in its own words: the Deployment's
    ``ReplicaFailure`` condition, or the beat StatefulSet's last ``FailedCreate`` Event."""

    reason: str
    message: str


@dataclass(frozen=True)
class PoolObservation:
    name: str
    queues: tuple[str, ...]
    desired: int
    replicas: int = 0
    ready: int = 0
    available: int = 0
    updated: int = 0
    rolled_out: bool = False
    """The Deployment controller has seen the latest spec and every replica is updated."""
    stalled: bool = False
    """The Deployment reports ``ProgressDeadlineExceeded``."""
    create_failure: CreateFailure | None = None
    """The Deployment reports ``ReplicaFailure``: its pods cannot be created."""
    backlog: int | None = None
    required: int | None = None
    """Available replicas the pool needs to count as available; None: ``desired``. An autoscaled
    pool needs its ``minReplicas``: one that is scaling up is not unavailable."""


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile saw, as plain values."""

    generation: int
    pools: tuple[PoolObservation, ...] = ()
    beat_enabled: bool = True
    beat_ready: bool = False
    beat_rolled_out: bool = False
    beat_create_failure: CreateFailure | None = None
    """Beat has no pod and its StatefulSet's last Event says why it cannot get one."""
    problems: tuple[Problem, ...] = ()
    queue_backlog: Mapping[str, int] | None = None
    """Messages waiting per queue, every priority list counted; None when not read."""
    queue_unacked: Mapping[str, int] | None = None
    """Messages delivered and not acknowledged per queue, where the broker tells (RabbitMQ's
    management API); None or empty elsewhere."""
    broker_error: str | None = None
    """Why the broker could not be read; None when it was read or not tried."""
    broker_kind: str | None = None
    """``redis``, ``redis-sentinel`` or ``rabbitmq``; None before the broker is known."""
    broker_counting: str | None = None
    """How its queues are counted (for the BrokerReachable message)."""
    health: health.HealthReport | None = None
    """The last hung-worker cycle; None when none ran (no monitor, or the spec is invalid)."""
    scaling: tuple[scaling.PoolReport, ...] = ()
    """The autoscaled pools, as the autoscaler last saw and decided them."""
    flower: str | None = None
    """``Ready`` or ``NotReady`` while ``spec.flower`` is enabled; None otherwise."""


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason this time: each becomes one Event."""

    type: str
    status: str
    reason: str
    message: str
    warning: bool


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any]
    transitions: list[Transition] = field(default_factory=list)


def observe_pool(
    pool_name: str,
    queues: Sequence[str],
    desired: int,
    live: Mapping[str, Any] | None,
    queue_backlog: Mapping[str, int] | None,
    required: int | None = None,
) -> PoolObservation:
    """Read a worker Deployment's status into a PoolObservation."""
    backlog = None if queue_backlog is None else sum(queue_backlog.get(q, 0) for q in queues)
    if live is None:
        return PoolObservation(
            pool_name, tuple(queues), desired, backlog=backlog, required=required
        )
    status = live.get("status") or {}
    generation = live.get("metadata", {}).get("generation", 0)
    replicas = status.get("replicas", 0)
    updated = status.get("updatedReplicas", 0)
    rolled_out = (
        status.get("observedGeneration", 0) >= generation
        and updated >= desired
        and replicas <= desired
    )
    conditions = status.get("conditions") or []
    stalled = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )
    failure = next(
        (
            CreateFailure(str(c.get("reason") or Reason.FAILED_CREATE), str(c.get("message", "")))
            for c in conditions
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
        ),
        None,
    )
    return PoolObservation(
        name=pool_name,
        queues=tuple(queues),
        desired=desired,
        replicas=replicas,
        ready=status.get("readyReplicas", 0),
        available=status.get("availableReplicas", 0),
        updated=updated,
        rolled_out=rolled_out,
        stalled=stalled,
        create_failure=failure,
        backlog=backlog,
        required=required,
    )


def beat_lacks_pod(live: Mapping[str, Any] | None) -> bool:
    """Whether the beat StatefulSet exists and has created no pod (then its Events say why)."""
    return live is not None and not (live.get("status") or {}).get("replicas", 0)


def beat_create_failure(events: Sequence[Mapping[str, Any]], now: datetime) -> CreateFailure | None:
    """The newest ``FailedCreate`` among the beat StatefulSet's Events (core/v1), if it is
    recent: the controller repeats it at least every ``FAILED_CREATE_FRESH_SECONDS`` while the
    failure lasts, and an older one (a quota raised since) must not show while a rollout has
    beat briefly without its pod."""
    oldest = _timestamp(now - timedelta(seconds=FAILED_CREATE_FRESH_SECONDS))

    def stamp(event: Mapping[str, Any]) -> str:
        return str(event.get("lastTimestamp") or event.get("eventTime") or "")

    failed = [e for e in events if e.get("reason") == Reason.FAILED_CREATE and stamp(e) >= oldest]
    if not failed:
        return None
    newest = max(failed, key=stamp)
    return CreateFailure(Reason.FAILED_CREATE, str(newest.get("message", "")))


def observe_beat(live: Mapping[str, Any] | None) -> tuple[bool, bool]:
    """(ready, rolled out) of the beat StatefulSet."""
    if live is None:
        return False, False
    status = live.get("status") or {}
    generation = live.get("metadata", {}).get("generation", 0)
    ready = status.get("readyReplicas", 0) >= 1
    rolled_out = (
        status.get("observedGeneration", 0) >= generation
        and status.get("currentRevision") == status.get("updateRevision")
        and status.get("updatedReplicas", 0) >= 1
    )
    return ready, rolled_out


def compute(
    seen: Observation,
    previous: Mapping[str, Any],
    now: datetime,
) -> StatusUpdate:
    """The status to write and the condition transitions since ``previous`` (the live status)."""
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = _conditions(seen, old.get(WORKERS_HEALTHY))
    stamped: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for type_, state, reason, message in conditions:
        before = old.get(type_)
        changed = before is None or before.get("status") != state
        stamped.append(
            {
                "type": type_,
                "status": state,
                "reason": reason,
                "message": message,
                "observedGeneration": seen.generation,
                "lastTransitionTime": (
                    _timestamp(now)
                    if changed or before is None
                    else before.get("lastTransitionTime", _timestamp(now))
                ),
            }
        )
        if changed or before is None or before.get("reason") != reason:
            if before is None and state != "True" and type_ != AVAILABLE:
                continue  # nothing worth telling: a new cluster is neither degraded nor unknown
            transitions.append(
                Transition(type_, state, reason, message, warning=_is_bad(type_, state))
            )

    desired = sum(p.desired for p in seen.pools)
    ready = sum(p.ready for p in seen.pools)
    status: dict[str, Any] = {
        "observedGeneration": seen.generation,
        "phase": _phase(conditions),
        "workers": f"{ready}/{desired}",
        "workersReady": ready,
        "workersDesired": desired,
        "beat": "Disabled"
        if not seen.beat_enabled
        else ("Ready" if seen.beat_ready else "NotReady"),
        "pools": [
            _pool_status(p, seen.health, previous, _report(seen.scaling, p.name))
            for p in seen.pools
        ],
        "conditions": stamped,
    }
    if seen.flower is not None:
        status["flower"] = seen.flower
    if seen.beat_enabled and seen.beat_create_failure is not None:
        status["beatFailure"] = _failure(seen.beat_create_failure)
    held = [r.load for r in seen.scaling if r.load is not None and r.load.running is not None]
    if held:
        status["inFlight"] = sum((load.running or 0) + load.held for load in held)
    if seen.scaling:
        status["scaling"] = "; ".join(
            _scaling_summary(p, _report(seen.scaling, p.name))
            for p in seen.pools
            if _report(seen.scaling, p.name) is not None
        )
    scales = [(r.last_scale, r.name) for r in seen.scaling if r.last_scale is not None]
    if scales:
        last, pool = max(scales, key=lambda item: item[0].at)
        status["lastScale"] = f"{pool} {last.before}→{last.after} ({last.reason})"
    if seen.broker_kind is not None:
        status["broker"] = seen.broker_kind
    elif "broker" in previous:
        status["broker"] = previous["broker"]
    if seen.queue_unacked:
        status["unacked"] = sum(seen.queue_unacked.values())
    if seen.queue_backlog is not None:
        # Over distinct queues: two pools consuming one queue must not count it twice.
        status["backlog"] = sum(seen.queue_backlog.values())
    elif "backlog" in previous:
        status["backlog"] = previous["backlog"]  # keep the last reading rather than show 0
    return StatusUpdate(status=status, transitions=transitions)


def _failure(failure: CreateFailure) -> dict[str, str]:
    return {"reason": failure.reason, "message": failure.message}


def _report(reports: Sequence[scaling.PoolReport], pool: str) -> scaling.PoolReport | None:
    return next((r for r in reports if r.name == pool), None)


def _scaling_summary(pool: PoolObservation, report: scaling.PoolReport | None) -> str:
    """One autoscaled pool for ``kubectl get -o wide``: ``default 3/4, 152 waiting, 8 held``."""
    parts = [f"{pool.name} {pool.replicas}/{report.replicas if report else pool.desired}"]
    load = report.load if report else None
    if load is not None and load.backlog is not None:
        parts.append(f"{load.backlog} waiting")
    if load is not None and load.running is not None:
        parts.append(f"{load.running + load.held} held")
    return ", ".join(parts)


def _scaling_status(report: scaling.PoolReport) -> dict[str, Any]:
    out: dict[str, Any] = {"desiredReplicas": report.replicas}
    load = report.load
    if load is not None and load.running is not None:
        out["running"] = load.running
        out["prefetched"] = load.held
        out["busyWorkers"] = load.busy_workers
    if report.decision is not None:
        out["reason"] = report.decision.reason
        out["message"] = report.decision.message
        if report.decision.limited:
            out["limitedBy"] = report.decision.limited
    if report.last_scale is not None:
        last = report.last_scale
        out["lastScale"] = {
            "time": _timestamp(last.at),
            "from": last.before,
            "to": last.after,
            "reason": last.reason,
            "message": last.message,
        }
    return out


def _pool_status(
    p: PoolObservation,
    report: health.HealthReport | None,
    previous: Mapping[str, Any],
    scaled: scaling.PoolReport | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name,
        "queues": list(p.queues),
        "desiredReplicas": p.desired,
        "replicas": p.replicas,
        "readyReplicas": p.ready,
        "availableReplicas": p.available,
        "updatedReplicas": p.updated,
    }
    if p.backlog is not None:
        out["backlog"] = p.backlog
    if p.create_failure is not None:
        out["replicaFailure"] = _failure(p.create_failure)
    if scaled is not None:
        out["autoscaling"] = _scaling_status(scaled)
        load = scaled.load
        if load is not None and load.running is not None:
            out["inFlight"] = load.running + load.held
    previous_pool: Mapping[str, Any] = next(
        (q for q in previous.get("pools") or [] if q.get("name") == p.name), {}
    )
    pool_health = next((h for h in report.pools if h.name == p.name), None) if report else None
    if pool_health is not None:
        out["workersAnswering"] = pool_health.answering
        out["workersChecked"] = pool_health.checked
    elif report is None:  # no cycle this time: keep the last one's counts rather than drop them
        for key in ("workersAnswering", "workersChecked"):
            if key in previous_pool:
                out[key] = previous_pool[key]
    before: list[Any] = list(previous_pool.get("restarts") or [])
    made: list[dict[str, Any]] = []
    if report is not None:
        made = [
            {
                "pod": r.pod,
                "verdict": str(r.verdict.kind),
                "evidence": r.verdict.evidence,
                "time": _timestamp(report.at),
            }
            for r in report.restarts
            if r.pool == p.name
        ]
    restarts = [*made, *(r for r in before if r not in made)][:RESTARTS_KEPT]
    if restarts:
        out["restarts"] = restarts
    return out


def restart_times(previous: Mapping[str, Any]) -> dict[str, list[tuple[str, datetime]]]:
    """Each pool's past hung-worker restarts as (pod, time), from the live status (the restart
    budget's memory, which must survive an operator restart)."""
    times: dict[str, list[tuple[str, datetime]]] = {}
    for pool in previous.get("pools") or []:
        for restart in pool.get("restarts") or []:
            try:
                at = datetime.strptime(restart["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except (KeyError, TypeError, ValueError):
                continue
            times.setdefault(str(pool.get("name")), []).append((str(restart.get("pod")), at))
    return times


def _health_condition(
    report: health.HealthReport | None, last: Mapping[str, Any] | None
) -> tuple[str, str, str]:
    if report is None:
        if last is not None:
            return str(last["status"]), str(last["reason"]), str(last.get("message", ""))
        return "Unknown", Reason.NOT_CHECKED, "the workers have not been asked yet"
    if report.guard == health.BROKER_UNREACHABLE:
        return "Unknown", Reason.WORKERS_UNREACHABLE, report.message
    if report.guard == health.MASS_UNRESPONSIVE:
        return "False", Reason.MASS_UNRESPONSIVE, report.message
    restarted = {r.pod for r in report.restarts}
    hung = [v for pool in report.pools for v in pool.hung]
    if hung:
        parts = [
            f"{v.pod} {v.kind} ({v.evidence}): "
            + ("restarted" if v.pod in restarted else "left running (Observe, or budget spent)")
            for v in hung
        ]
        return "False", Reason.HUNG_WORKERS, "; ".join(parts)
    answering = sum(p.answering for p in report.pools)
    checked = sum(p.checked for p in report.pools)
    return "True", Reason.ALL_ANSWERING, f"{answering}/{checked} workers answered, none hung"


def _conditions(
    seen: Observation, last_health: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for each condition, in a fixed order. Without a health
    report this time, the last WorkersHealthy condition stands."""
    unavailable = [
        p.name
        for p in seen.pools
        if p.available < (p.desired if p.required is None else min(p.required, p.desired))
    ]
    rolling = [p.name for p in seen.pools if not p.rolled_out]
    if seen.beat_enabled and not seen.beat_rolled_out:
        rolling.append("beat")
    stalled = [p.name for p in seen.pools if p.stalled]
    failures = [
        (f"pool {p.name}", p.create_failure) for p in seen.pools if p.create_failure is not None
    ]
    if seen.beat_enabled and seen.beat_create_failure is not None:
        failures.append(("beat", seen.beat_create_failure))

    if unavailable:
        available = (
            "False",
            Reason.WORKERS_UNAVAILABLE,
            f"worker pools below their desired replicas: {', '.join(unavailable)}",
        )
    elif seen.beat_enabled and not seen.beat_ready:
        available = ("False", Reason.BEAT_UNAVAILABLE, "beat is not ready")
    else:
        available = ("True", Reason.ALL_READY, "every worker pool and beat is ready")

    if seen.problems:
        progressing = ("False", seen.problems[0].reason, "spec not applied: see Degraded")
    elif rolling:
        progressing = ("True", Reason.ROLLING_OUT, f"rolling out: {', '.join(rolling)}")
    else:
        progressing = ("False", Reason.RECONCILED, "every child matches the spec")

    if seen.problems:
        first = seen.problems[0]
        more = f" (and {len(seen.problems) - 1} more)" if len(seen.problems) > 1 else ""
        degraded = ("True", first.reason, first.message + more)
    elif failures:
        degraded = (
            "True",
            failures[0][1].reason,
            "pods cannot be created: "
            + "; ".join(f"{who}: {failure.message}" for who, failure in failures),
        )
    elif stalled:
        degraded = (
            "True",
            Reason.ROLLOUT_STALLED,
            f"rollout exceeded its progress deadline: {', '.join(stalled)}",
        )
    else:
        degraded = ("False", Reason.AS_EXPECTED, "no problem found")

    if seen.broker_error is not None:
        broker = ("False", Reason.BROKER_UNREACHABLE, seen.broker_error)
    elif seen.queue_backlog is not None:
        broker = ("True", Reason.BROKER_OK, seen.broker_counting or "queues read from the broker")
    else:
        broker = ("Unknown", Reason.BROKER_UNKNOWN, "the broker was not read")

    conditions = [
        (AVAILABLE, *available),
        (PROGRESSING, *progressing),
        (DEGRADED, *degraded),
        (BROKER_REACHABLE, *broker),
        (WORKERS_HEALTHY, *_health_condition(seen.health, last_health)),
    ]
    if seen.scaling:
        conditions += _scaling_conditions(seen.scaling)
    return conditions


def _scaling_conditions(
    reports: Sequence[scaling.PoolReport],
) -> list[tuple[str, str, str, str]]:
    decided = [r for r in reports if r.decision is not None]
    unreadable = [
        r.name
        for r in decided
        if r.decision is not None
        and r.decision.reason in (scaling.Reason.BROKER_UNREADABLE, scaling.Reason.FALLBACK)
    ]
    if unreadable:
        active = (
            "False",
            Reason.SCALING_BROKER_UNREADABLE,
            f"the broker cannot be read; holding the replicas of: {', '.join(unreadable)}",
        )
    elif len(decided) < len(reports):
        active = ("Unknown", Reason.NOT_POLLED, "the autoscaler has not polled every pool yet")
    else:
        active = ("True", Reason.VALID_METRICS, "queue lengths and workers' tasks are read")
    limits = [
        (r.name, r.decision.limited, r.decision.recommended, r.replicas)
        for r in decided
        if r.decision is not None and r.decision.limited
    ]
    if limits:
        limited = (
            "True",
            str(limits[0][1]),
            "; ".join(f"pool {n} wants {w}, held at {r} by {why}" for n, why, w, r in limits),
        )
    else:
        limited = ("False", Reason.WITHIN_RANGE, "every pool's load fits its min and max")
    return [(SCALING_ACTIVE, *active), (SCALING_LIMITED, *limited)]


def _phase(conditions: list[tuple[str, str, str, str]]) -> str:
    by_type = {c[0]: c[1] for c in conditions}
    if by_type[DEGRADED] == "True":
        return DEGRADED
    if by_type[AVAILABLE] == "True" and by_type[PROGRESSING] != "True":
        return AVAILABLE
    return PROGRESSING


def _is_bad(type_: str, status: str) -> bool:
    return (type_ == DEGRADED and status == "True") or (
        type_ in (AVAILABLE, BROKER_REACHABLE, WORKERS_HEALTHY, SCALING_ACTIVE)
        and status == "False"
    )


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
