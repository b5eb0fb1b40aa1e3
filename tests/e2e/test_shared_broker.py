"""Several clusters on one broker, on the real cluster: each counts only its own workers, and a
rotated broker Secret moves a cluster to its new broker by rolling its pods.

Every worker on a broker receives every pidbox broadcast. The operator addresses each census to
the node names of the cluster's own pods, so another cluster's workers, a pool whose monitoring
is off and a worker outside Kubernetes can neither answer for it nor crowd out its replies.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from celery_operator import naming
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import wait_for
from tests.integration.procs import CeleryProcess, client_app, demo_env, start_celery

CYCLES = 10
HEALTH_INTERVAL_SECONDS = 3  # the e2e operator's (harness._run_operator)


@pytest.fixture
def outside_worker(redis_url: str, tmp_path: Path) -> Iterator[CeleryProcess]:
    """A Celery worker on the same broker that is nobody's: not in Kubernetes at all."""
    worker = start_celery(
        ["worker", "-n", "celery@outside", "-Q", "elsewhere", "-c", "1", "-l", "INFO"],
        demo_env(redis_url),
        tmp_path / "outside.log",
    )
    worker.node = "celery@outside"
    app = client_app(redis_url)
    try:
        wait_for(
            lambda: app.control.inspect(timeout=1, destination=[worker.node]).ping(),
            timeout=60,
            message=f"the outside worker never answered:\n{worker.log_tail()}",
        )
        yield worker
    finally:
        app.close()
        worker.stop()


def _answering(clusters: Clusters, name: str) -> dict[str, tuple[int, int]]:
    """(workersAnswering, workersChecked) of each pool in ``name``'s status."""
    return {
        p["name"]: (p.get("workersAnswering", -1), p.get("workersChecked", -1))
        for p in clusters.get(name).get("status", {}).get("pools", [])
    }


def _uids(clusters: Clusters, cluster: str) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in clusters.pods(f"{naming.INSTANCE_LABEL}={cluster}")
    }


def _restarts(clusters: Clusters, cluster: str) -> int:
    return sum(
        status.get("restartCount", 0)
        for p in clusters.pods(f"{naming.INSTANCE_LABEL}={cluster}")
        for status in p.get("status", {}).get("containerStatuses") or []
    )


def test_each_cluster_counts_only_its_own_workers_on_a_shared_broker(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    outside_worker: CeleryProcess,
) -> None:
    alpha = sample_spec(replicas=3, queues=["qa"], concurrency=1)
    beta = sample_spec(replicas=3, queues=["qb"], concurrency=1)
    # A pool nobody monitors, on the same broker: its workers answer nobody's census.
    beta["workers"].append(
        {
            "name": "quiet",
            "queues": ["qq"],
            "replicas": 1,
            "concurrency": 1,
            "hungWorkers": {"action": "Off"},
        }
    )
    for spec in (alpha, beta):
        spec["beat"] = {"enabled": False}
    clusters.create("alpha", alpha)
    clusters.create("beta", beta)
    clusters.wait_phase("alpha", "Available")
    clusters.wait_phase("beta", "Available")
    wait_for(
        lambda: (
            _answering(clusters, "alpha") == {"default": (3, 3)}
            and _answering(clusters, "beta").get("default") == (3, 3)
        ),
        timeout=90,
        message="the clusters never saw all of their own workers answer",
    )
    uids = {name: _uids(clusters, name) for name in ("alpha", "beta")}

    seen: list[tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]] = []
    deadline = time.monotonic() + CYCLES * HEALTH_INTERVAL_SECONDS + 5
    while time.monotonic() < deadline:
        seen.append((_answering(clusters, "alpha"), _answering(clusters, "beta")))
        time.sleep(1.0)
    assert len(seen) >= CYCLES
    assert all(a == {"default": (3, 3)} for a, _ in seen), seen
    assert all(b.get("default") == (3, 3) for _, b in seen), seen
    assert all("quiet" not in b or b["quiet"] == (-1, -1) for _, b in seen), seen
    for name in ("alpha", "beta"):
        healthy = clusters.condition(name, "WorkersHealthy")
        assert (healthy["status"], healthy["reason"]) == ("True", "AllAnswering"), healthy
        assert _uids(clusters, name) == uids[name]  # nobody was replaced
        assert _restarts(clusters, name) == 0  # nor restarted by the kubelet
        assert not clusters.event_messages("RestartedHungWorker", name)
    outside_worker.assert_running()


def test_a_rotated_broker_secret_rolls_the_pods_onto_the_new_broker(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
) -> None:
    assert redis_url.endswith("/0")
    spec = sample_spec(replicas=1)
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    before = _uids(clusters, "demo")
    template = clusters.deployments()["demo-worker-default"]["spec"]["template"]
    digest = template["metadata"]["annotations"][naming.SECRET_DIGEST_ANNOTATION]

    moved = redis_url[: -len("/0")] + "/1"
    clusters.core.patch_namespaced_secret(
        "broker", clusters.namespace, {"data": {"url": base64.b64encode(moved.encode()).decode()}}
    )

    def rolled() -> bool:
        now = _uids(clusters, "demo")
        return (
            clusters.phase("demo") == "Available"
            and len(now) == len(before)
            and not set(now.values()) & set(before.values())
        )

    wait_for(rolled, timeout=240, message="the worker and beat pods did not roll")
    template = clusters.deployments()["demo-worker-default"]["spec"]["template"]
    rotated = template["metadata"]["annotations"][naming.SECRET_DIGEST_ANNOTATION]
    assert rotated != digest
    assert "redis" not in rotated  # a digest, never the value
    beat = clusters.statefulsets()["demo-beat"]["spec"]["template"]["metadata"]["annotations"]
    assert beat[naming.SECRET_DIGEST_ANNOTATION] == rotated

    app = _celery(moved)
    try:
        assert app.send_task(f"{TASKS}.add", args=(20, 22)).get(timeout=60) == 42
    finally:
        app.close()
    reachable = clusters.condition("demo", "BrokerReachable")
    assert reachable["status"] == "True", reachable
