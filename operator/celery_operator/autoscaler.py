"""The autoscaler: decides each autoscaled pool's replicas (:func:`scaling.decide`) and writes them.

The load comes from the cluster's shared broker (:mod:`brokers`): its poller reads every watched
queue of every cluster on that broker in one pipelined round trip per ``pollIntervalSeconds``
and wakes this cluster's loop when the counts change. A poll here then reads that snapshot (no
I/O) and decides, in the cluster's own reconcile loop, so it never races the reconcile that owns
the same Deployments. A cluster whose autoscaled pools are all at zero with nothing waiting is
not polled at all until the broker wakes it. What the workers hold (``active`` and
``reserved``, addressed to the pool's pods through the shared broker) is asked in the background
every ``TASKS_REFRESH`` (less often while no decision can depend on it), so a silent worker
never delays a poll; a scale-down waits for an answer that is at most ``TASKS_FRESH`` old.

Before a scale-down the pool's pods get a ``pod-deletion-cost`` from the tasks they hold, and the
replica count is written one poll later, once the ReplicaSet controller can see the costs: the
idle workers go, and Celery's warm shutdown (SIGTERM) covers a task taken in between.

The replica counts live here, in memory: the reconcile builds the Deployments with them (so the
two never disagree) and restores them when someone else changes a Deployment's replicas.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from celery_operator import metrics, naming, scaling
from celery_operator.brokers import SharedBroker
from celery_operator.kube import EventTarget, Kube, KubeError
from celery_operator.spec import ClusterSpec, WorkerPool

log = logging.getLogger(__name__)

DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
TASKS_REFRESH: Final = timedelta(seconds=2)
"""How often the workers are asked what they hold, while any pool autoscales."""
TASKS_FRESH: Final = timedelta(seconds=6)
"""An answer older than this counts as unknown: the pool does not scale down on it."""
QUIET_TASKS_REFRESH: Final = timedelta(seconds=10)
QUIET_TASKS_FRESH: Final = timedelta(seconds=30)
"""While every autoscaled pool of a cluster is quiet (see :func:`_quiet`) its workers are asked
every 10 s, not 2 s, and an answer stays good for 30 s: no decision can depend on it then, and
status and metrics still show what the workers hold. Measured: 20 clusters of 5 workers at
their minimum spent most of the operator's CPU (about 12 % of a core) asking every 2 s."""

BACKLOG_FRESH_POLLS: Final = 3
"""A shared backlog reading older than this many poll intervals (at least 3 s) counts as
unreadable: the broker's poller is stuck on a broker that does not answer."""
Clock = Callable[[], datetime]

ClusterKey = tuple[str, str]


@dataclass(frozen=True)
class Target:
    """What the last reconcile of a cluster tells the autoscaler."""

    spec: ClusterSpec
    broker: SharedBroker
    events: EventTarget


@dataclass(frozen=True)
class PodTasks:
    pool: str
    ready: bool
    cost: str | None
    """The pod's deletion-cost annotation as listed."""
    tasks: tuple[int, int] | None
    """(running, prefetched); None when it did not answer."""


@dataclass(frozen=True)
class TaskReading:
    at: datetime
    """When the question was asked (not answered): the conservative age."""
    pods: Mapping[str, PodTasks] = field(default_factory=dict)
    error: str | None = None


@dataclass
class _Pool:
    replicas: int
    history: scaling.History
    due: datetime
    load: scaling.Load | None = None
    decision: scaling.Decision | None = None
    last_scale: scaling.LastScale | None = None


@dataclass
class _Cluster:
    pools: dict[str, _Pool] = field(default_factory=dict)
    target: Target | None = None
    reading: TaskReading | None = None
    asking: Future[TaskReading] | None = None
    costs: dict[str, str] = field(default_factory=dict)
    """Deletion costs this autoscaler wrote, by pod: newer than the last listing."""
    woken: bool = False
    """The broker saw this cluster's queues change: its pools are due at the next poll."""


class Autoscaler:
    """Scales the autoscaled pools of every cluster; one call of :meth:`tick` per poll."""

    def __init__(
        self,
        kube: Kube,
        clock: Clock,
        wake: Callable[[ClusterKey], None] = lambda key: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.wake = wake
        """Makes the cluster's loop poll now (thread-safe: the broker's poller calls it)."""
        self.monotonic = monotonic
        """The clock of the broker's backlog readings."""
        self._clusters: dict[ClusterKey, _Cluster] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tasks-census")

    # --- what the reconcile asks ----------------------------------------------------------

    def replicas(
        self, key: ClusterKey, spec: ClusterSpec, live: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, int]:
        """The replicas of each autoscaled pool, for the reconcile to build its Deployment with.

        A pool seen for the first time keeps its live count (within min and max), or starts at
        ``minReplicas``. ``live`` maps pool names to their live Deployments.
        """
        cluster = self._cluster(key)
        now = self.clock()
        scaled = {p.name: p for p in spec.workers if p.autoscaling.enabled}
        for gone in set(cluster.pools) - set(scaled):
            del cluster.pools[gone]
        for name, pool in scaled.items():
            if name in cluster.pools:
                continue
            policy = pool.autoscaling
            found = (live.get(name) or {}).get("spec", {}).get("replicas")
            start = policy.min_replicas if found is None else int(found)
            start = min(max(start, policy.min_replicas), policy.max_replicas)
            cluster.pools[name] = _Pool(start, scaling.fresh_history(start, now), due=now)
        return {name: memory.replicas for name, memory in cluster.pools.items()}

    def track(self, key: ClusterKey, target: Target | None) -> None:
        """Poll this cluster's pools (None: stop, until a reconcile can say where the broker is),
        and have its broker watch their queues."""
        cluster = self._cluster(key)
        before, cluster.target = cluster.target, target
        scaled = [p for p in target.spec.workers if p.autoscaling.enabled] if target else []
        if target is not None and scaled:
            target.broker.watch(
                key,
                {q for p in scaled for q in p.queues},
                min(p.autoscaling.poll_interval_seconds for p in scaled),
                lambda: self._woken(key),
            )
        elif target is not None:
            target.broker.unwatch(key)
        if before is not None and (target is None or before.broker is not target.broker):
            before.broker.unwatch(key)

    def _woken(self, key: ClusterKey) -> None:
        """From the broker's poller thread: the cluster's queues changed."""
        cluster = self._clusters.get(key)
        if cluster is not None:
            cluster.woken = True
            self.wake(key)

    def forget(self, key: ClusterKey) -> None:
        with self._lock:
            cluster = self._clusters.pop(key, None)
        if cluster is not None and cluster.target is not None:
            cluster.target.broker.unwatch(key)

    @property
    def clusters(self) -> int:
        """Clusters this autoscaler remembers (released ones are forgotten)."""
        return len(self._clusters)

    def report(self, key: ClusterKey) -> tuple[scaling.PoolReport, ...]:
        cluster = self._clusters.get(key)
        if cluster is None:
            return ()
        return tuple(
            scaling.PoolReport(name, p.load, p.replicas, p.decision, p.last_scale)
            for name, p in cluster.pools.items()
        )

    def next_poll(self, key: ClusterKey) -> float | None:
        """Seconds until a pool of this cluster is due; None when none autoscales, or when every
        autoscaled pool idles at zero (the broker wakes the loop when a message comes)."""
        cluster = self._clusters.get(key)
        if cluster is None or cluster.target is None or not cluster.pools:
            return None
        if all(_idle_at_zero(p) for p in cluster.pools.values()):
            # The broker wakes the loop when a message comes; should that wake ever be lost,
            # its last reading (no I/O) still says so at the next reconcile.
            reading = cluster.target.broker.backlog()
            queues = {q for p in cluster.target.spec.workers if p.name in cluster.pools
                      for q in p.queues}  # fmt: skip
            counts = reading.counts if reading is not None else None
            if counts and any(counts.get(q, 0) for q in queues):
                return 0.0
            return None
        now = self.clock()
        return max(0.0, min((p.due - now).total_seconds() for p in cluster.pools.values()))

    # --- one poll -----------------------------------------------------------------------------

    def tick(self, key: ClusterKey) -> None:
        """Poll the pools that are due: read, decide, and write what changed."""
        cluster = self._clusters.get(key)
        if cluster is None or cluster.target is None:
            return
        target, now = cluster.target, self.clock()
        pools = [
            p for p in target.spec.workers if p.name in cluster.pools and p.autoscaling.enabled
        ]
        woken, cluster.woken = cluster.woken, False
        due = [p for p in pools if woken or cluster.pools[p.name].due <= now]
        if not due:
            return
        backlog, unacked = self._backlog(target, due)
        quiet = backlog is not None and all(
            _quiet(p, cluster.pools[p.name].replicas, backlog) for p in pools
        )
        self._ask_workers(key, cluster, target, now, QUIET_TASKS_REFRESH if quiet else None)
        fresh_for = QUIET_TASKS_FRESH if quiet else TASKS_FRESH
        for pool in due:
            memory = cluster.pools[pool.name]
            memory.due = now + timedelta(seconds=pool.autoscaling.poll_interval_seconds)
            load = pool_load(
                pool, memory.replicas, backlog, cluster.reading, now, fresh_for, unacked
            )
            self._step(key, cluster, target, pool, load, now)

    def _step(
        self,
        key: ClusterKey,
        cluster: _Cluster,
        target: Target,
        pool: WorkerPool,
        load: scaling.Load,
        now: datetime,
    ) -> None:
        namespace, name = key
        memory = cluster.pools[pool.name]
        decision = scaling.decide(
            load, memory.replicas, pool.concurrency, pool.autoscaling, memory.history, now
        )
        memory.load, memory.decision = load, decision
        _export(namespace, name, pool.name, load, decision)
        metrics.MAX_REPLICAS.labels(namespace, name, pool.name).set(pool.autoscaling.max_replicas)
        if decision.direction == scaling.DOWN and self._mark_costs(namespace, cluster, pool.name):
            # Scale down on the next poll, once the ReplicaSet controller sees the costs.
            memory.history = dataclasses.replace(decision.history, changes=memory.history.changes)
            return
        if decision.replicas != memory.replicas:
            deployment = naming.worker_name(name, pool.name)
            try:
                self.kube.scale_deployment(namespace, deployment, decision.replicas)
            except KubeError as error:
                log.warning("could not scale %s/%s: %s", namespace, deployment, error.message)
                return
            log.info("scaled %s/%s %s", namespace, deployment, decision.message)
            memory.last_scale = scaling.LastScale(
                now, memory.replicas, decision.replicas, decision.reason, decision.message
            )
            metrics.SCALING_DECISIONS.labels(
                namespace, name, pool.name, decision.direction, decision.reason
            ).inc()
            self.kube.emit_event(
                target.events,
                reason="ScaledUp" if decision.direction == scaling.UP else "ScaledDown",
                message=f"pool {pool.name}: {decision.message}",
                warning=False,
                now=now,
            )
        memory.replicas, memory.history = decision.replicas, decision.history

    def _backlog(
        self, target: Target, pools: Sequence[WorkerPool]
    ) -> tuple[Mapping[str, int] | None, Mapping[str, int] | None]:
        """The broker's last shared reading (waiting, and unacked where the broker tells), when
        it is fresh and readable; else None (then the replicas hold: scaling.decide)."""
        reading = target.broker.backlog()
        if reading is None or reading.counts is None:
            return None, None
        interval = min(p.autoscaling.poll_interval_seconds for p in pools)
        if self.monotonic() - reading.at > max(3.0, BACKLOG_FRESH_POLLS * interval):
            return None, None
        return reading.counts, reading.in_flight

    def _mark_costs(self, namespace: str, cluster: _Cluster, pool: str) -> int:
        """Give each pod of ``pool`` its deletion cost; the number of pods that needed one."""
        if cluster.reading is None:
            return 0
        marked = 0
        for pod, seen in cluster.reading.pods.items():
            if seen.pool != pool:
                continue
            held = None if seen.tasks is None and seen.ready else sum(seen.tasks or (0, 0))
            want = str(scaling.deletion_cost(held))
            if cluster.costs.get(pod, seen.cost) == want:
                continue
            try:
                self.kube.annotate_pod(namespace, pod, {DELETION_COST_ANNOTATION: want})
            except KubeError as error:
                log.warning("could not set the deletion cost of %s: %s", pod, error.message)
            cluster.costs[pod] = want
            marked += 1
        return marked

    # --- what the workers hold, asked in the background ------------------------------------

    def _ask_workers(
        self,
        key: ClusterKey,
        cluster: _Cluster,
        target: Target,
        now: datetime,
        refresh: timedelta | None = None,
    ) -> None:
        """Take in the last answer when it is in, and ask again when it is ``refresh`` old
        (``TASKS_REFRESH`` unless said otherwise)."""
        if cluster.asking is not None and cluster.asking.done():
            try:
                cluster.reading = cluster.asking.result()
            except Exception as error:  # the adapters' errors, unexpected or not: tasks unknown
                log.warning("asking the workers of %s/%s failed: %s", *key, error)
                cluster.reading = TaskReading(at=now, error=str(error))
            cluster.asking = None
            known = set(cluster.reading.pods)
            cluster.costs = {p: c for p, c in cluster.costs.items() if p in known}
        every = TASKS_REFRESH if refresh is None else refresh
        fresh = cluster.reading is not None and now - cluster.reading.at < every
        idle = all(p.replicas == 0 for p in cluster.pools.values())  # nobody to ask
        if cluster.asking is None and not fresh and not idle:
            cluster.asking = self._executor.submit(self._read_tasks, key, target, now)

    def _read_tasks(self, key: ClusterKey, target: Target, now: datetime) -> TaskReading:
        namespace, name = key
        scaled = {p.name for p in target.spec.workers if p.autoscaling.enabled}
        selector = {naming.INSTANCE_LABEL: name, naming.COMPONENT_LABEL: naming.WORKER}
        listed: dict[str, tuple[str, bool, str | None]] = {}
        for pod in self.kube.list_pods(namespace, selector):
            meta, state = pod["metadata"], pod.get("status") or {}
            pool = (meta.get("labels") or {}).get(naming.POOL_LABEL, "")
            if pool not in scaled or meta.get("deletionTimestamp"):
                continue
            if state.get("phase") != "Running":
                continue  # not started: holds no task
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in state.get("conditions") or []
            )
            cost = (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION)
            listed[meta["name"]] = (pool, ready, cost)
        nodes = {f"{pool}@{pod}": pod for pod, (pool, _, _) in listed.items()}
        answers = target.broker.tasks_in_hand(sorted(nodes))
        by_pod = {nodes[node]: tasks for node, tasks in answers.items() if node in nodes}
        return TaskReading(
            at=now,
            pods={
                pod: PodTasks(pool, ready, cost, by_pod.get(pod))
                for pod, (pool, ready, cost) in listed.items()
            },
        )

    def _cluster(self, key: ClusterKey) -> _Cluster:
        with self._lock:
            return self._clusters.setdefault(key, _Cluster())


def _quiet(pool: WorkerPool, replicas: int, backlog: Mapping[str, int]) -> bool:
    """Whether what the workers hold can change no decision for ``pool``: it is at its minimum
    (so it cannot scale down), nothing waits, and one task per slot or more is its target (so
    running tasks alone can never ask for more workers than run them)."""
    policy = pool.autoscaling
    return (
        replicas <= policy.min_replicas
        and sum(backlog.get(q, 0) for q in pool.queues) == 0
        and policy.target_tasks_per_slot >= 1
    )


def _idle_at_zero(pool: _Pool) -> bool:
    """At zero, decided to stay there, and nothing waited at the last poll."""
    return (
        pool.replicas == 0
        and pool.decision is not None
        and pool.decision.replicas == 0
        and pool.load is not None
        and pool.load.backlog == 0
    )


def pool_load(
    pool: WorkerPool,
    replicas: int,
    backlog: Mapping[str, int] | None,
    reading: TaskReading | None,
    now: datetime,
    fresh_for: timedelta = TASKS_FRESH,
    unacked: Mapping[str, int] | None = None,
) -> scaling.Load:
    """A pool's load from the last backlog read (with the broker's unacked counts, where it
    gives them) and the last answer of its workers.

    A ready worker that did not answer counts as busy (a solo pool cannot answer while it runs
    a task); one not ready yet holds nothing. An answer older than ``fresh_for``, or none,
    leaves the running tasks unknown, unless the pool has no replicas to hold any.
    """
    waiting = None if backlog is None else sum(backlog.get(q, 0) for q in pool.queues)
    held_by_broker = None if unacked is None else sum(unacked.get(q, 0) for q in pool.queues)
    if reading is None or reading.error is not None or now - reading.at > fresh_for:
        # Nothing known of the workers' tasks, unless there are no workers to hold any.
        return scaling.Load(
            backlog=waiting, running=0 if replicas == 0 else None, unacked=held_by_broker
        )
    pods = [p for p in reading.pods.values() if p.pool == pool.name]
    answered = [p.tasks for p in pods if p.tasks is not None]
    silent_ready = sum(1 for p in pods if p.tasks is None and p.ready)
    return scaling.Load(
        backlog=waiting,
        running=sum(running for running, _ in answered),
        held=sum(held for _, held in answered),
        busy_workers=silent_ready + sum(1 for running, held in answered if running + held),
        unacked=held_by_broker,
    )


def _export(
    namespace: str, name: str, pool: str, load: scaling.Load, decision: scaling.Decision
) -> None:
    if load.backlog is not None:
        metrics.QUEUE_BACKLOG.labels(namespace, name, pool).set(load.backlog)
    if load.running is not None:
        metrics.TASKS_RUNNING.labels(namespace, name, pool).set(load.running)
        metrics.TASKS_PREFETCHED.labels(namespace, name, pool).set(load.held)
    metrics.DESIRED_REPLICAS.labels(namespace, name, pool).set(decision.replicas)
