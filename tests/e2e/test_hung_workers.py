"""Hung workers on the real cluster: a stuck worker's pod is replaced and its queue drains; with
the broker gone, nobody is restarted.

A stuck worker is one the kubelet cannot see: its main loop beats (the liveness probe passes),
but its only pool slot runs a task that never ends while work waits. Only the operator, which
sees the workers, the broker and the pods at once, can tell.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import naming
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import wait_for

STUCK_AFTER_SECONDS = 10
OUTAGE_WATCH_SECONDS = 20
"""Several monitor cycles (every 3 s in e2e, 2 missed cycles would make a worker Unresponsive),
short of the probes' 30 s broker grace, so the kubelet restarts no container either."""


def _pods(clusters: Clusters) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in clusters.pods(f"{naming.POOL_LABEL}=default")
        if not p["metadata"].get("deletionTimestamp")
    }


def test_a_stuck_worker_is_replaced_and_its_queue_drains(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    api_client: client.ApiClient,
) -> None:
    spec = sample_spec(
        replicas=1,
        concurrency=1,
        terminationGracePeriodSeconds=5,
        hungWorkers={"stuckAfterSeconds": STUCK_AFTER_SECONDS},
    )
    spec["beat"] = {"enabled": False}
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    [stuck_pod] = _pods(clusters)

    app = _celery(redis_url)
    app.send_task(f"{TASKS}.sleep", args=[3600])  # the only slot, for good
    wait_for(
        lambda: any((app.control.inspect(timeout=2).active() or {}).values()),
        timeout=60,
        message="the endless task never started",
    )
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    results = [app.send_task(f"{TASKS}.record", args=[key, str(i)]) for i in range(5)]

    def replaced() -> bool:
        pods = _pods(clusters)
        return bool(pods) and stuck_pod not in pods

    wait_for(
        replaced, timeout=STUCK_AFTER_SECONDS + 90, message="the stuck worker was not replaced"
    )
    [message] = clusters.event_messages("RestartedHungWorker")
    assert f"deleted pod {stuck_pod}" in message
    assert "Stuck" in message
    assert "message(s) waiting" in message

    # The queue drains on the replacement: every waiting task runs, once.
    for result in results:
        result.get(timeout=120)
    counter = redis.Redis.from_url(redis_url)
    assert int(counter.get(f"{key}:runs") or 0) == 5
    assert counter.scard(f"{key}:tokens") == 5

    [pool] = clusters.get("demo")["status"]["pools"]
    assert [(r["pod"], r["verdict"]) for r in pool["restarts"]] == [(stuck_pod, "Stuck")]
    app.close()


def test_with_the_broker_gone_no_worker_is_restarted(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    api_client: client.ApiClient,
) -> None:
    spec = sample_spec(replicas=2, hungWorkers={"unresponsiveCycles": 2})
    spec["beat"] = {"enabled": False}
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    wait_for(
        lambda: clusters.condition("demo", "WorkersHealthy").get("status") == "True",
        timeout=60,
        message="the workers were never found healthy",
    )
    before = {name: pod["metadata"]["uid"] for name, pod in _pods(clusters).items()}

    client.CoreV1Api(api_client).delete_namespaced_pod("redis", clusters.namespace)

    def guarded() -> bool:
        condition = clusters.condition("demo", "WorkersHealthy")
        return condition.get("reason") in ("BrokerUnreachable", "MassUnresponsive")

    wait_for(guarded, timeout=60, message="the monitor never noticed the broker was gone")
    # Many cycles (one every 3 s here) with the broker gone: still nobody restarted.
    wait_for(
        lambda: clusters.condition("demo", "BrokerReachable").get("status") == "False",
        timeout=30,
        message="the broker was never reported unreachable",
    )
    deadline = time.monotonic() + OUTAGE_WATCH_SECONDS
    while time.monotonic() < deadline:
        assert guarded(), clusters.condition("demo", "WorkersHealthy")
        after = {name: pod["metadata"]["uid"] for name, pod in _pods(clusters).items()}
        assert after == before, "a worker pod was replaced while the broker was down"
        time.sleep(2)
    assert clusters.event_messages("RestartedHungWorker") == []
