"""Autoscaling on the real cluster: a burst scales a pool up and back to zero, a scale-down removes
only idle workers, and a broker outage holds the replicas until the broker is back.

Every task is ``record_after``: it works for a while, then counts its run under a test key, so
the counts prove that each task ran exactly once (none lost, none run again after a kill).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import naming
from tests.e2e.conftest import recreate_redis
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import pod_ready, wait_for

DEPLOYMENT = naming.worker_name("demo", "default")
SCALE_DOWN_WINDOW = 8
BURST = 200


def _replicas(clusters: Clusters) -> int:
    return int(clusters.deployments()[DEPLOYMENT]["spec"].get("replicas") or 0)


def _live_pods(clusters: Clusters) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in clusters.pods(f"{naming.POOL_LABEL}=default")
        if not p["metadata"].get("deletionTimestamp")
    }


def _spec(sample_spec: Callable[..., dict[str, Any]], **pool: Any) -> dict[str, Any]:
    spec = sample_spec(prefetchMultiplier=1, **pool)
    spec["beat"] = {"enabled": False}
    return spec


def _runs(redis_url: str, key: str) -> tuple[int, int]:
    counter = redis.Redis.from_url(redis_url)
    return int(counter.get(f"{key}:runs") or 0), int(counter.scard(f"{key}:tokens"))


def test_a_burst_scales_the_pool_from_zero_up_and_back_to_zero(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
) -> None:
    spec = _spec(
        sample_spec,
        concurrency=2,
        autoscaling={
            "minReplicas": 0,
            "maxReplicas": 4,
            "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW},
        },
    )
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    wait_for(
        lambda: clusters.condition("demo", "ScalingActive").get("status") == "True",
        timeout=30,
        message="the autoscaler never polled the pool",
    )
    assert _replicas(clusters) == 0

    app = _celery(redis_url)
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    results = [
        app.send_task(f"{TASKS}.record_after", args=[key, str(i), 0.2]) for i in range(BURST)
    ]
    wait_for(lambda: _replicas(clusters) > 0, timeout=30, message="the burst never scaled up")
    wait_for(
        lambda: _replicas(clusters) == 4, timeout=30, message="the pool never reached maxReplicas"
    )
    wait_for(
        lambda: "lastScale" in clusters.get("demo")["status"],
        timeout=15,
        message="status never showed the scale",
    )
    status = clusters.get("demo")["status"]
    [pool] = status["pools"]
    assert pool["autoscaling"]["lastScale"]["from"] == 0, pool
    assert status["lastScale"].startswith("default 0→"), status

    for result in results:
        result.get(timeout=180)
    assert _runs(redis_url, key) == (BURST, BURST)

    wait_for(
        lambda: _replicas(clusters) == 0,
        timeout=SCALE_DOWN_WINDOW + 60,
        message="the idle pool never went back to zero",
    )
    ups = clusters.event_messages("ScaledUp")
    downs = clusters.event_messages("ScaledDown")
    assert ups, "no ScaledUp Event"
    assert any(m.startswith("pool default: 0 → ") for m in ups), ups
    assert downs, "no ScaledDown Event"
    assert any(" → 0: " in m for m in downs), downs
    app.close()


def test_a_scale_down_removes_only_idle_workers(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
) -> None:
    spec = _spec(
        sample_spec,
        concurrency=1,
        terminationGracePeriodSeconds=90,
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 3,
            "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW},
        },
    )
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")

    app = _celery(redis_url)
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    # Three tasks, one per worker (concurrency 1, prefetch 1): two long ones and a short one.
    durations = [45.0, 45.0, 4.0]
    results = [
        app.send_task(f"{TASKS}.record_after", args=[key, str(i), seconds])
        for i, seconds in enumerate(durations)
    ]
    wait_for(lambda: _replicas(clusters) == 3, timeout=30, message="never scaled to 3")

    # Watch who is busy until the autoscaler scales down to 2.
    busy: set[str] = set()
    deadline = time.monotonic() + 90
    while _replicas(clusters) == 3:
        assert time.monotonic() < deadline, "never scaled down with one worker idle"
        busy = _busy_pods(app)
        time.sleep(0.5)
    assert _replicas(clusters) == 2
    assert len(busy) == 2, f"expected the two long tasks running, saw {busy}"

    wait_for(lambda: len(_live_pods(clusters)) == 2, timeout=30, message="no pod was removed")
    assert set(_live_pods(clusters)) == busy, "a busy worker was removed"
    for result in results:
        result.get(timeout=120)
    assert _runs(redis_url, key) == (3, 3)  # no task lost, none run twice
    app.close()


def _busy_pods(app: Celery) -> set[str]:
    """Pods whose worker runs a task now (node names are ``<pool>@<pod>``)."""
    active = app.control.inspect(timeout=1).active() or {}
    return {node.split("@", 1)[1] for node, tasks in active.items() if tasks}


def test_with_the_broker_unreadable_the_replicas_hold_until_it_is_back(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    api_client: client.ApiClient,
    worker_image: str,
    host_network: bool,
) -> None:
    spec = _spec(
        sample_spec,
        concurrency=1,
        autoscaling={
            "minReplicas": 0,
            "maxReplicas": 2,
            "scaleDown": {"stabilizationWindowSeconds": 2},
        },
    )
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    app = _celery(redis_url)
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    for i in range(2):
        app.send_task(f"{TASKS}.record_after", args=[key, str(i), 3.0])
    wait_for(lambda: _replicas(clusters) == 2, timeout=30, message="never scaled to 2")
    app.close()

    core = client.CoreV1Api(api_client)
    core.delete_namespaced_pod("redis", clusters.namespace)
    wait_for(
        lambda: clusters.condition("demo", "ScalingActive").get("reason") == "BrokerUnreadable",
        timeout=30,
        message="the autoscaler never reported the broker unreadable",
    )
    # Far longer than the 2 s scale-down window, with nothing known of the load: no change.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert _replicas(clusters) == 2, "the pool was scaled on missing data"
        time.sleep(1)
    [pool] = clusters.get("demo")["status"]["pools"]
    assert pool["autoscaling"]["reason"] == "BrokerUnreadable", pool

    # The broker comes back (empty): the autoscaler recovers by itself and scales to zero.
    recreate_redis(core, clusters.namespace, redis_url, worker_image, host_network)
    wait_for(lambda: pod_ready(api_client, clusters.namespace, "redis"), timeout=60)
    wait_for(
        lambda: clusters.condition("demo", "ScalingActive").get("status") == "True",
        timeout=60,
        message="the autoscaler never recovered",
    )
    wait_for(lambda: _replicas(clusters) == 0, timeout=60, message="never scaled to zero after")
