"""Benchmark: how fast a burst raises a pool's replicas, and how soon after the backlog drains the
pool starts to shrink, on the real cluster; ours against a KEDA-like baseline run here too.

Run with ``make bench`` (or ``pytest tests/e2e/bench_autoscale.py -s``); it prints figures and
ratios and asserts nothing about them (a noisy 2-core machine makes timed assertions flaky).

Ours: a pool with ``autoscaling`` at its defaults (1 s poll), except the scale-down
stabilization window, shortened to ``WINDOW`` seconds for both sides so a run takes minutes.

The baseline does what KEDA's Redis list trigger and the HPA do, with their defaults. KEDA's
30 s ``pollingInterval`` only decides 0 <-> 1; above zero (here the pool idles at one) the HPA
asks KEDA's metrics adapter at each 15 s sync, and the adapter reads ``LLEN`` of the one queue
list afresh. So on the HPA's tick it reads the list and wants
``ceil(length / listLength 5)`` replicas (tolerance 10 %, the highest recommendation of the
window when scaling down) and set them. It scales the same kind of pool (autoscaling off) through
its ``replicas`` field, as a user's external scaler would.

Each trial: the pool idles at one replica; a burst of ``BURST`` one-second tasks lands in its
queue; we time the Deployment's replicas rising above one, then the last task finishing, then
the replicas falling again.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from kopf.testing import KopfRunner

from celery_operator import naming
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import wait_for

BURST = 100
TASK_SECONDS = 1.0
WINDOW = 20
TRIALS = int(os.environ.get("BENCH_TRIALS", "3"))
HPA_TICK = 15.0
KEDA_LIST_LENGTH = 5
MAX_REPLICAS = 4


@dataclass
class Trial:
    rise: float
    """Seconds from the burst having landed to replicas > 1."""
    shrink: float
    """Seconds from the last task finishing to replicas falling."""


@dataclass
class KedaLike:
    """The baseline scaler above zero: the HPA's 15 s tick, reading one list afresh."""

    clusters: Clusters
    redis_url: str
    queue: str
    name: str
    stop: threading.Event = field(default_factory=threading.Event)
    length: int | None = None
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    replicas: int = 1

    next_tick: float = 0.0

    def rephase(self, rng: random.Random) -> None:
        """Put the burst about to land at a random point of the tick cycle, as a real burst
        would (trials that start right after a tick would otherwise all land alike)."""
        self.next_tick = time.monotonic() + rng.uniform(0, HPA_TICK)

    def run(self) -> None:
        broker = redis.Redis.from_url(self.redis_url)
        while not self.stop.wait(0.05):
            now = time.monotonic()
            if now >= self.next_tick:
                self.length = int(broker.llen(self.queue))  # the adapter's fresh read
                self._tick(now)
                self.next_tick += HPA_TICK

    def _tick(self, now: float) -> None:
        assert self.length is not None
        ratio = self.length / (KEDA_LIST_LENGTH * self.replicas)
        raw = self.replicas
        if abs(ratio - 1) > 0.1:
            raw = math.ceil(self.length / KEDA_LIST_LENGTH)
        raw = min(max(raw, 1), MAX_REPLICAS)
        self.recommendations = [(t, r) for t, r in self.recommendations if now - t < WINDOW]
        self.recommendations.append((now, raw))
        desired = raw if raw > self.replicas else max(r for _, r in self.recommendations)
        desired = min(desired, max(2 * self.replicas, self.replicas + 4))
        if desired != self.replicas:
            self.replicas = desired
            spec = self.clusters.get(self.name)["spec"]
            spec["workers"][0]["replicas"] = desired
            self.clusters.patch_spec(self.name, {"workers": spec["workers"]})


def _replicas(clusters: Clusters, name: str) -> int:
    deployment = clusters.deployments()[naming.worker_name(name, "default")]
    return int(deployment["spec"].get("replicas") or 0)


def _trial(
    clusters: Clusters,
    name: str,
    queue: str,
    redis_url: str,
    before_burst: Callable[[], None] = lambda: None,
) -> Trial:
    wait_for(lambda: _replicas(clusters, name) == 1, timeout=180, message="pool not at 1")
    app = _celery(redis_url)
    before_burst()
    results = [
        app.send_task(f"{TASKS}.sleep", args=[TASK_SECONDS], queue=queue) for _ in range(BURST)
    ]
    landed = time.monotonic()
    while _replicas(clusters, name) <= 1:
        time.sleep(0.05)
    rise = time.monotonic() - landed
    for result in results:
        result.get(timeout=600)
    drained = time.monotonic()
    top = _replicas(clusters, name)
    while _replicas(clusters, name) >= top:
        time.sleep(0.1)
        top = max(top, _replicas(clusters, name))
    shrink = time.monotonic() - drained
    app.close()
    return Trial(rise, shrink)


def _say(line: str) -> None:
    """Print past KopfRunner, whose click runner swaps ``sys.stdout`` while the operator runs."""
    print(line, file=sys.__stdout__, flush=True)


def _summary(label: str, trials: list[Trial]) -> tuple[float, float]:
    rise = statistics.mean(t.rise for t in trials)
    shrink = statistics.mean(t.shrink for t in trials)
    rises = ", ".join(f"{t.rise:.1f}" for t in trials)
    shrinks = ", ".join(f"{t.shrink:.1f}" for t in trials)
    _say(f"{label:<34} burst → replicas raised: mean {rise:5.1f} s  ({rises})")
    _say(f"{'':<34} drained → scale-down starts: mean {shrink:5.1f} s  ({shrinks})")
    return rise, shrink


def test_bench_autoscale(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
) -> None:
    spec = sample_spec(queues=["ours"], concurrency=2, prefetchMultiplier=1)
    spec["beat"] = {"enabled": False}
    spec["workers"][0]["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "scaleDown": {"stabilizationWindowSeconds": WINDOW},
    }
    clusters.create("ours", spec)
    clusters.wait_phase("ours", "Available")
    ours = [_trial(clusters, "ours", "ours", redis_url) for _ in range(TRIALS)]
    clusters.delete("ours")

    spec = sample_spec(queues=["base"], concurrency=2, prefetchMultiplier=1, replicas=1)
    spec["beat"] = {"enabled": False}
    clusters.create("base", spec)
    clusters.wait_phase("base", "Available")
    baseline = KedaLike(clusters, redis_url, "base", "base")
    thread = threading.Thread(target=baseline.run, daemon=True)
    thread.start()
    rng = random.Random(7)
    try:
        theirs = [
            _trial(clusters, "base", "base", redis_url, lambda: baseline.rephase(rng))
            for _ in range(TRIALS)
        ]
    finally:
        baseline.stop.set()
        thread.join()

    _say(
        f"\nautoscaling benchmark: {TRIALS} trials, bursts of {BURST} tasks of {TASK_SECONDS:g} s, "
        f"concurrency 2, max {MAX_REPLICAS} replicas, scale-down window {WINDOW} s on both sides"
    )
    our_rise, our_shrink = _summary("celery-operator (1 s poll)", ours)
    keda_rise, keda_shrink = _summary("KEDA-like (15 s HPA, fresh LLEN)", theirs)
    _say(
        f"{'':<34} (a burst at a random moment waits {HPA_TICK / 2:.1f} s on "
        f"average, {HPA_TICK:.0f} s at worst, for the baseline to act)"
    )
    _say(
        f"ratio (baseline / ours): raise {keda_rise / our_rise:.1f}x, "
        f"scale-down start {keda_shrink / our_shrink:.1f}x; "
        f"target: raise within 2 s (ours: {'met' if max(t.rise for t in ours) <= 2 else 'MISSED'})"
    )
    assert len(ours) == len(theirs) == TRIALS  # figures, not a pass/fail on speed
