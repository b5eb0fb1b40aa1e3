"""The hung-worker monitor: one census per cluster and cycle, verdicts, and what to restart.

It remembers, per worker pod, what the verdicts need from one cycle to the next (in memory: after
an operator restart a worker is judged again after a few cycles). It does no Kubernetes I/O: the
reconcile gives it the pods and the pool's past restarts (kept in status, so the restart budget
survives an operator restart), and carries out the restarts it decides. Talking to the workers
goes through the injected ``census`` (:mod:`celery_operator.remote`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from celery_operator import health
from celery_operator.builders import HEARTBEAT_LIMIT_SECONDS, LIVENESS_KILL_GRACE_SECONDS
from celery_operator.health import (
    BROKER_UNREACHABLE,
    MASS_UNRESPONSIVE,
    HealthReport,
    PoolHealth,
    Restart,
    WorkerPod,
)
from celery_operator.spec import ClusterSpec

log = logging.getLogger(__name__)

Census = Callable[[Sequence[str]], Mapping[str, health.Reply]]
"""(node names to ask) -> the replies of those that answered, by node name: the cluster's
shared broker (``brokers.Broker.census``), addressed to exactly these nodes. Raises
``remote.WorkersUnreachable`` when the broker cannot be reached."""

ClusterKey = tuple[str, str]

RECOVERY: Final = timedelta(seconds=60)
"""After a guard lifts, missed cycles count for nobody this long: workers reconnect on Celery's
own backoff (2, 4, 6... seconds), some later than others, and must not be judged Unresponsive
for it."""


@dataclass
class _ClusterMemory:
    workers: dict[str, health.Memory] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    reported: set[tuple[str, health.Kind]] = field(default_factory=set)
    quiet_until: datetime | None = None
    """Missed cycles do not count before this (set while a guard holds, see RECOVERY)."""
    restarted: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    """Pods this monitor deleted, by name: (pool, when). Never judged again while they linger,
    counted as unavailable, and counted in the budget even before status records them."""
    last: HealthReport | None = None


class HealthMonitor:
    """Runs hung-worker cycles for every cluster, at most one per ``interval`` seconds each."""

    def __init__(self, interval: float) -> None:
        self.interval = timedelta(seconds=interval)
        self._clusters: dict[ClusterKey, _ClusterMemory] = {}

    def last(self, key: ClusterKey) -> HealthReport | None:
        memory = self._clusters.get(key)
        return memory.last if memory else None

    def due(self, key: ClusterKey, now: datetime) -> bool:
        last = self.last(key)
        return last is None or now - last.at >= self.interval

    def forget(self, key: ClusterKey) -> None:
        self._clusters.pop(key, None)

    def cycle(
        self,
        key: ClusterKey,
        spec: ClusterSpec,
        census: Census,
        pods: Sequence[WorkerPod],
        backlog: Mapping[str, int] | None,
        recent_restarts: Mapping[str, Sequence[tuple[str, datetime]]],
        now: datetime,
    ) -> HealthReport:
        """One cycle: ask every worker once (``census``, addressed to ``<pool>@<pod>`` of each
        running pod), judge each, and pick the restarts within budget.

        ``backlog`` is the messages waiting per pool (None when the broker could not be read:
        then nobody counts as stuck). ``recent_restarts`` are each pool's past restarts as
        (pod, time), from status.
        """
        memory = self._clusters.setdefault(key, _ClusterMemory())
        watched = {p.name: p for p in spec.workers if p.hung.action != "Off"}
        longest = max((p.hung.window_seconds for p in watched.values()), default=0)
        memory.restarted = {
            pod: (pool, at)
            for pod, (pool, at) in memory.restarted.items()
            if now - at < timedelta(seconds=longest)
        }
        running = [
            p
            for p in pods
            if p.pool in watched
            and p.running
            and not p.terminating
            and p.name not in memory.restarted
        ]
        names = {p.name for p in running}
        memory.workers = {k: v for k, v in memory.workers.items() if k in names}
        memory.reported = {r for r in memory.reported if r[0] in names}
        if not running:
            memory.last = HealthReport(at=now)
            return memory.last

        try:
            replies = census([node_of(p) for p in running])
        except Exception as error:  # the broker is down: this says nothing about the workers
            memory.quiet_until = now + RECOVERY
            memory.last = HealthReport(
                at=now,
                guard=BROKER_UNREACHABLE,
                message=f"cannot ask the workers ({error}); restarting nobody",
                pools=_unchecked(watched, running),
            )
            return memory.last
        by_pod = {node.partition("@")[2]: reply for node, reply in replies.items()}
        answered = {name for name in names if name in by_pod}
        before = memory.answered & names
        if health.mass_failure(len(before), len(before & answered)):
            silent = len(before - answered)
            memory.quiet_until = now + RECOVERY
            memory.last = HealthReport(
                at=now,
                guard=MASS_UNRESPONSIVE,
                message=f"{silent} of {len(before)} workers stopped answering at once: a broker "
                "or network problem, not the workers; restarting nobody",
                pools=_unchecked(watched, running, answered),
            )
            return memory.last  # the silent ones are not counted as missing a cycle
        memory.answered = answered

        pools: list[PoolHealth] = []
        restarts: list[Restart] = []
        for pool_name, pool in watched.items():
            members = sorted((p for p in running if p.pool == pool_name), key=lambda p: p.name)
            policy = health.Policy(
                unresponsive_cycles=pool.hung.unresponsive_cycles,
                stuck_seconds=pool.hung.stuck_after_seconds,
                startup_seconds=spec.probes.startup_timeout_seconds,
                min_silence_seconds=kubelet_window(spec),
            )
            waiting = None if backlog is None else backlog.get(pool_name, 0)
            hung: list[tuple[WorkerPod, health.Verdict]] = []
            quiet = memory.quiet_until is not None and now < memory.quiet_until
            for pod in members:
                reply = by_pod.get(pod.name)
                if reply is None and quiet and pod.name in memory.workers:
                    continue  # still reconnecting after an outage, probably: not judged yet
                remembered = health.remember(memory.workers.get(pod.name), reply, now)
                memory.workers[pod.name] = remembered
                verdict = health.judge(
                    pod.name,
                    remembered,
                    reply,
                    policy,
                    backlog=-1 if waiting is None else waiting,
                    pod_age=pod.age,
                    now=now,
                )
                if verdict.hung:
                    hung.append((pod, verdict))
            allowed = 0
            if pool.hung.action == "Restart":
                budget = health.Budget(
                    pool.hung.max_restarts,
                    pool.hung.window_seconds,
                    pool.hung.max_unavailable_percent,
                )
                known = dict(recent_restarts.get(pool_name, ()))
                known.update(
                    {
                        pod: at
                        for pod, (pool_of, at) in memory.restarted.items()
                        if pool_of == pool_name
                    }
                )
                allowed = health.restarts_allowed(
                    budget,
                    recent=list(known.values()),
                    replicas=max(pool.replicas, len(members)),
                    unavailable=sum(
                        1
                        for p in pods
                        if p.pool == pool_name
                        and (p.terminating or not p.ready or p.name in memory.restarted)
                    ),
                    now=now,
                )
            chosen = hung[:allowed]
            for pod, verdict in chosen:
                restarts.append(Restart(pool_name, pod.name, pod.uid, verdict))
                memory.workers.pop(pod.name, None)
                memory.restarted[pod.name] = (pool_name, now)
            pools.append(
                PoolHealth(
                    name=pool_name,
                    checked=len(members),
                    answering=sum(1 for p in members if p.name in answered),
                    hung=tuple(v for _, v in hung),
                    held=tuple(v for _, v in hung[allowed:]),
                )
            )
        memory.last = HealthReport(at=now, pools=tuple(pools), restarts=tuple(restarts))
        return memory.last

    def newly_held(self, key: ClusterKey, report: HealthReport) -> list[health.Verdict]:
        """Hung workers left alone that have not been reported yet (one Event each, not one per
        cycle)."""
        memory = self._clusters.get(key)
        if memory is None:
            return []
        fresh = []
        for pool in report.pools:
            for verdict in pool.held:
                if (verdict.pod, verdict.kind) not in memory.reported:
                    memory.reported.add((verdict.pod, verdict.kind))
                    fresh.append(verdict)
        return fresh


def node_of(pod: WorkerPod) -> str:
    """The Celery node name the operator gives a worker pod (``naming.node_name``)."""
    return f"{pod.pool}@{pod.name}"


KUBELET_RESTART_MARGIN_SECONDS: Final = 20
"""Time for a worker the kubelet restarted to start and answer again."""


def kubelet_window(spec: ClusterSpec) -> int:
    """Seconds within which the kubelet's liveness probe restarts a worker whose main loop
    stopped (heartbeat limit, failures in a row, kill grace, restart); 0 without the probe.
    The monitor leaves a silence that short to the kubelet, so the two never race."""
    probes = spec.probes
    live = probes.worker_liveness
    if not (probes.enabled and live.enabled):
        return 0
    return (
        HEARTBEAT_LIMIT_SECONDS
        + live.period_seconds * live.failure_threshold
        + LIVENESS_KILL_GRACE_SECONDS
        + KUBELET_RESTART_MARGIN_SECONDS
    )


def _unchecked(
    watched: Mapping[str, object], running: Sequence[WorkerPod], answered: set[str] | None = None
) -> tuple[PoolHealth, ...]:
    return tuple(
        PoolHealth(
            name=name,
            checked=sum(1 for p in running if p.pool == name),
            answering=sum(1 for p in running if p.pool == name and p.name in (answered or set())),
        )
        for name in watched
    )
