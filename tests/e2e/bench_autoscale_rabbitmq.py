"""Benchmark: autoscaling on RabbitMQ, on the real cluster: how fast a burst raises a pool from
zero, how soon it drains and shrinks, and how much of the work in flight each scaler can see;
ours against a KEDA-like RabbitMQ baseline run here too.

Run with ``make bench`` (or ``pytest tests/e2e/bench_autoscale_rabbitmq.py -s``); it prints
figures and ratios and asserts nothing about them (a noisy 2-core machine makes timed assertions
flaky). One RabbitMQ node (``tests/e2e/rabbit.py``), one virtual host; results in the test's
Redis.

Ours: a pool with ``autoscaling`` at its defaults (1 s poll) and the management API, so it counts
ready *and* unacknowledged messages, except ``minReplicas: 0`` and the scale-down stabilization
window, shortened to ``WINDOW`` seconds for both sides so a run takes minutes.

The baseline does what KEDA's RabbitMQ trigger (``protocol: amqp``, ``mode: QueueLength``,
``value: 5``, ``minReplicaCount: 0``) and the HPA do with their defaults: every 30 s, KEDA reads
the queue's *ready* messages by AMQP passive ``queue_declare`` and activates a pool at zero to
one replica when any is ready, or takes it back to zero when none has been for the cooldown
(``WINDOW``, like the HPA's window); on the HPA's 15 s tick, with the pool above zero, the HPA
reads the same count afresh (KEDA's metrics adapter asks the scaler at each sync) and wants
``ceil(ready / 5)`` replicas (tolerance 10 %, the highest recommendation of the window when
scaling down, at most max(100 %, 4 pods) more per tick). It scales the same kind of pool
(autoscaling off) through its ``replicas`` field, as a user's external scaler would.

Each trial: the pool idles at zero; a burst lands in its queue (``BURSTS``: the Redis benchmark's
100 one-second tasks, then 8 of 30 s, one per pool slot at the top, which are soon all in flight and
none ready); we time the Deployment's replicas rising above zero, reaching their top, the last task
finishing, the replicas falling and reaching zero again. Every second until the last task is done,
we read the true work (ready + unacknowledged: prefetched, and running with the demo app's late
acks) from the management API, and what the side's scaler counts at that moment: for the baseline
the ready count an AMQP passive declare gives, for ours its own metrics (``pool_backlog`` +
max(``pool_tasks_running``, ``queue_unacked``), the work ``scaling.decide`` counts; the unacked
gauge is refreshed at each reconcile, every 3 s here, while the autoscaler reads unacked counts at
every poll, so this slightly undercounts what ours acts on). Printed: the mean share of the true
work each side counted, and the share of samples in which work was in flight and the side counted
none (a scaler that then scales down removes busy consumers: KEDA issues 356, 5050).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import prometheus_client
import pytest
from celery import Celery
from kopf.testing import KopfRunner

from celery_operator import naming
from celery_operator.rabbitmq import ManagementApi, read_amqp, read_management
from tests.e2e.harness import TASKS, Clusters
from tests.e2e.kube import wait_for
from tests.e2e.rabbit import Vhost, rabbit, rabbit_spec, vhost

__all__ = ["rabbit", "vhost"]  # the fixtures, for pytest

CONCURRENCY: Final = 2
WINDOW: Final = 20
"""Seconds of the scale-down stabilization window (ours, the HPA) and of KEDA's cooldown."""
TRIALS: Final = int(os.environ.get("BENCH_TRIALS", "3"))
LONG_TRIALS: Final = int(os.environ.get("BENCH_LONG_TRIALS", "1"))
IDLE: Final = 0
MAX_REPLICAS: Final = 4
KEDA_POLL: Final = 30.0
HPA_TICK: Final = 15.0
HPA_TOLERANCE: Final = 0.1
KEDA_QUEUE_LENGTH: Final = 5
SAMPLE_EVERY: Final = 1.0
READ_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class Burst:
    tasks: int
    seconds: float
    """How long each task sleeps."""
    trials: int


BURSTS: Final = (
    Burst(tasks=100, seconds=1.0, trials=TRIALS),
    Burst(tasks=8, seconds=30.0, trials=LONG_TRIALS),
)
"""The Redis benchmark's burst (``bench_autoscale.py``), then one of long tasks, as many as the
pool's slots at ``MAX_REPLICAS``: soon nothing is ready and everything is in flight."""
BACK_TO_IDLE_TIMEOUT: Final = WINDOW + 2 * KEDA_POLL + HPA_TICK + 60
"""The longest a pool may take from its last task to zero: the window, then (the baseline) up to
two KEDA polls after the HPA's last tick."""


class Background:
    """``step`` every ``every`` seconds in a daemon thread while the ``with`` block runs; the
    first error ends the loop and is raised when the block is left."""

    def __init__(self, step: Callable[[], None], every: float) -> None:
        self._step, self._every = step, every
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                self._step()
                due = max(due + self._every, time.monotonic())
                self._stop.wait(due - time.monotonic())
        except BaseException as error:  # raised again in the test's thread
            self._error = error

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._error is not None and kind is None:
            raise self._error


def _next(due: float, period: float, now: float) -> float:
    """The next tick of a period that keeps its phase, skipping ticks already missed."""
    due += period
    return due if due > now else now + period


@dataclass
class KedaLike:
    """The baseline scaler: KEDA's 30 s poll for 0 ↔ 1, then the HPA's 15 s tick."""

    clusters: Clusters
    url: str
    name: str
    """The cluster's name, which is also its one queue's."""
    replicas: int = IDLE
    last_active: float | None = None
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    next_poll: float = 0.0
    next_tick: float = 0.0

    def ready(self) -> int:
        """What the trigger counts: the queue's ready messages, by AMQP passive declare."""
        return read_amqp(self.url, [self.name], timeout=READ_TIMEOUT)[self.name].waiting

    def rephase(self, rng: random.Random) -> None:
        """Put the burst about to land at a random point of the poll and tick cycles, as a real
        burst would (trials that start right after a tick would otherwise all land alike)."""
        now = time.monotonic()
        self.next_poll = now + rng.uniform(0, KEDA_POLL)
        self.next_tick = now + rng.uniform(0, HPA_TICK)

    def step(self) -> None:
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = _next(self.next_poll, KEDA_POLL, now)
            self._poll(now)
        if now >= self.next_tick:
            self.next_tick = _next(self.next_tick, HPA_TICK, now)
            if self.replicas > 0:  # the HPA does nothing while KEDA holds the pool at zero
                self._tick(now)

    def _poll(self, now: float) -> None:
        """KEDA's own loop: active when anything is ready (activationValue 0)."""
        if self.ready() > 0:
            self.last_active = now
            if self.replicas == 0:
                self._scale(1)
        elif self.replicas > 0 and (self.last_active is None or now - self.last_active >= WINDOW):
            self.recommendations.clear()
            self._scale(0)

    def _tick(self, now: float) -> None:
        ready = self.ready()
        raw = self.replicas
        if abs(ready / (KEDA_QUEUE_LENGTH * self.replicas) - 1) > HPA_TOLERANCE:
            raw = math.ceil(ready / KEDA_QUEUE_LENGTH)
        raw = min(max(raw, 1), MAX_REPLICAS)  # KEDA gives the HPA minReplicas 1
        self.recommendations = [(t, r) for t, r in self.recommendations if now - t < WINDOW]
        self.recommendations.append((now, raw))
        desired = raw if raw > self.replicas else max(r for _, r in self.recommendations)
        self._scale(min(desired, max(2 * self.replicas, self.replicas + 4)))

    def _scale(self, replicas: int) -> None:
        if replicas == self.replicas:
            return
        self.replicas = replicas
        spec = self.clusters.get(self.name)["spec"]
        spec["workers"][0]["replicas"] = replicas
        self.clusters.patch_spec(self.name, {"workers": spec["workers"]})


def _our_count(namespace: str, name: str) -> int:
    """The work ours counts for cluster ``name`` (pool ``default``, queue ``name``), from its
    metrics (the operator runs in this process: this registry is what its /metrics serves)."""

    def gauge(metric: str, **labels: str) -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            metric, {"namespace": namespace, "cluster": name, **labels}
        )
        return value or 0.0

    backlog = gauge("celery_operator_pool_backlog", pool="default")
    running = gauge("celery_operator_pool_tasks_running", pool="default")
    unacked = gauge("celery_operator_queue_unacked", queue=name)
    return int(backlog + max(running, unacked))


@dataclass(frozen=True)
class Side:
    label: str
    name: str
    """The cluster's name, which is also its one queue's."""
    counted: Callable[[], int]
    """What the side's scaler counts of the queue's work right now."""
    before_burst: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Trial:
    rise: float
    """Seconds from the burst having landed to replicas above zero."""
    top: int
    to_top: float
    """Seconds from the burst having landed to replicas at ``top``."""
    drain: float
    """Seconds from the burst having landed to its last task done."""
    shrink: float
    """Seconds from the last task done to the replicas first falling from ``top`` (negative:
    before it was done)."""
    idle: float
    """Seconds from the last task done to zero replicas (negative: before it was done)."""
    early_downs: int
    """Replica decreases before the last task was done."""
    seen: float
    """Mean share of the true work (ready + unacked) that the side counted."""
    blind: float
    """Share of the samples with work in flight in which the side counted none."""


def _replicas(clusters: Clusters, name: str) -> int:
    deployment = clusters.deployments()[naming.worker_name(name, "default")]
    return int(deployment["spec"].get("replicas") or 0)


def _trial(
    clusters: Clusters, app: Celery, side: Side, burst: Burst, true_work: Callable[[str], int]
) -> Trial:
    wait_for(
        lambda: _replicas(clusters, side.name) == IDLE,
        timeout=BACK_TO_IDLE_TIMEOUT,
        message=f"{side.name} not back at {IDLE}",
    )
    side.before_burst()
    changes: list[tuple[float, int]] = []
    """(when, replicas) at each change of the Deployment's replicas."""
    samples: list[tuple[int, int]] = []
    """(true work, what the side counted), every second while the burst runs."""

    def watch() -> None:
        replicas = _replicas(clusters, side.name)
        if not changes or changes[-1][1] != replicas:
            changes.append((time.monotonic(), replicas))

    def sample() -> None:
        samples.append((true_work(side.name), side.counted()))

    with Background(watch, 0.1):
        wait_for(lambda: changes, timeout=10)
        results = [
            app.send_task(f"{TASKS}.sleep", args=[burst.seconds], queue=side.name)
            for _ in range(burst.tasks)
        ]
        landed = time.monotonic()
        with Background(sample, SAMPLE_EVERY):
            for result in results:
                result.get(timeout=600)
            drained = time.monotonic()
        wait_for(
            lambda: changes[-1][1] == IDLE,
            timeout=BACK_TO_IDLE_TIMEOUT,
            message=f"{side.name} never went back to {IDLE}: {changes}",
        )
    during = [(t, r) for t, r in changes if landed <= t <= drained]
    top = max((r for _, r in during), default=IDLE)
    topped = next(t for t, r in changes if r == top and t >= landed)
    busy = [(work, min(counted, work)) for work, counted in samples if work > 0]
    return Trial(
        rise=next(t for t, r in changes if r > IDLE) - landed,
        top=top,
        to_top=topped - landed,
        drain=drained - landed,
        shrink=next(t for t, r in changes if t > topped and r < top) - drained,
        idle=changes[-1][0] - drained,
        early_downs=sum(1 for (_, a), (_, b) in itertools.pairwise(during) if b < a),
        seen=statistics.mean(counted / work for work, counted in busy) if busy else 1.0,
        blind=sum(1 for _, counted in busy if counted == 0) / len(busy) if busy else 0.0,
    )


def _say(line: str) -> None:
    """Print past KopfRunner, whose click runner swaps ``sys.stdout`` while the operator runs."""
    print(line, file=sys.__stdout__, flush=True)


def _figure(
    label: str, what: str, values: Sequence[float], unit: str = " s", scale: float = 1.0
) -> float:
    median = statistics.median(values)
    each = ", ".join(f"{v * scale:.1f}" for v in values)
    _say(f"{label:<40} {what:<34} median {median * scale:6.1f}{unit}  ({each})")
    return median


@dataclass(frozen=True)
class Summary:
    rise: float
    to_top: float
    drain: float
    shrink: float
    idle: float
    seen: float
    blind: float


def _summary(label: str, trials: Sequence[Trial]) -> Summary:
    tops = "/".join(str(t.top) for t in trials)
    downs = sum(t.early_downs for t in trials)
    summary = Summary(
        rise=_figure(label, "burst → replicas > 0:", [t.rise for t in trials]),
        to_top=_figure("", f"burst → top ({tops}):", [t.to_top for t in trials]),
        drain=_figure("", "burst → last task done:", [t.drain for t in trials]),
        shrink=_figure("", "last task done → first scale-down:", [t.shrink for t in trials]),
        idle=_figure("", "last task done → back at 0:", [t.idle for t in trials]),
        seen=_figure("", "true work counted (mean share):", [t.seen for t in trials], " %", 100),
        blind=_figure("", "work in flight, counted none:", [t.blind for t in trials], " %", 100),
    )
    _say(f"{'':<40} scale-downs before the last task was done: {downs}")
    return summary


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "n/a"


def _report(
    burst: Burst, ours: Side, our: Sequence[Trial], base: Side, theirs: Sequence[Trial]
) -> None:
    _say(
        f"\nbursts of {burst.tasks} tasks of {burst.seconds:g} s, {burst.trials} trials per side "
        "(negative times: before the last task was done)"
    )
    o = _summary(ours.label, our)
    b = _summary(base.label, theirs)
    _say(
        f"ratio (ours / baseline): replicas > 0 {_ratio(o.rise, b.rise)}, "
        f"top {_ratio(o.to_top, b.to_top)}, drained {_ratio(o.drain, b.drain)}, "
        f"true work counted {_ratio(o.seen, b.seen)}"
    )


@pytest.mark.timeout(900)
def test_bench_autoscale_rabbitmq(
    operator: KopfRunner,
    clusters: Clusters,
    vhost: Vhost,
    redis_url: str,
    worker_image: str,
    host_network: bool,
) -> None:
    spec = rabbit_spec(
        clusters,
        vhost,
        redis_url,
        worker_image,
        host_network,
        management_api=True,
        concurrency=CONCURRENCY,
        prefetchMultiplier=1,
    )
    spec["beat"] = {"enabled": False}
    api = ManagementApi(vhost.server.management_url, *vhost.server.credentials)

    def true_work(queue: str) -> int:
        load = read_management(api, vhost.name, [queue], timeout=READ_TIMEOUT)[queue]
        return load.waiting + (load.in_flight or 0)

    app = Celery("bench", broker=vhost.url, backend=redis_url)
    try:
        ours_spec: dict[str, Any] = copy.deepcopy(spec)
        ours_spec["workers"][0]["queues"] = ["ours"]
        ours_spec["workers"][0]["autoscaling"] = {
            "minReplicas": IDLE,
            "maxReplicas": MAX_REPLICAS,
            "scaleDown": {"stabilizationWindowSeconds": WINDOW},
        }
        clusters.create("ours", ours_spec)
        clusters.wait_phase("ours", "Available")
        ours = Side(
            "celery-operator (1 s poll, mgmt API)",
            "ours",
            lambda: _our_count(clusters.namespace, "ours"),
        )
        our = {
            b: [_trial(clusters, app, ours, b, true_work) for _ in range(b.trials)] for b in BURSTS
        }
        clusters.delete("ours")

        base_spec: dict[str, Any] = copy.deepcopy(spec)
        base_spec["workers"][0]["queues"] = ["base"]
        base_spec["workers"][0]["replicas"] = IDLE
        clusters.create("base", base_spec)
        clusters.wait_phase("base", "Available")
        baseline = KedaLike(clusters, vhost.url, "base")
        rng = random.Random(7)
        base = Side(
            "KEDA-like (AMQP ready, 30 s + 15 s HPA)",
            "base",
            baseline.ready,
            lambda: baseline.rephase(rng),
        )
        baseline.rephase(rng)
        with Background(baseline.step, 0.05):
            theirs = {
                b: [_trial(clusters, app, base, b, true_work) for _ in range(b.trials)]
                for b in BURSTS
            }
    finally:
        app.close()

    _say(
        f"\nRabbitMQ autoscaling benchmark: concurrency {CONCURRENCY}, prefetch 1 with late acks, "
        f"{IDLE}..{MAX_REPLICAS} replicas, scale-down window (and KEDA's cooldown) {WINDOW} s; "
        f"KEDA activates a burst {KEDA_POLL / 2:.0f} s after it lands on average, "
        f"{KEDA_POLL:.0f} s at worst, then the HPA acts within {HPA_TICK:.0f} s"
    )
    for burst in BURSTS:
        _report(burst, ours, our[burst], base, theirs[burst])
    assert all(len(our[b]) == len(theirs[b]) == b.trials for b in BURSTS)  # figures, not timings
