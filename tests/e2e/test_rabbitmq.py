"""The operator on a RabbitMQ broker, on the real cluster: the sample runs its tasks, a burst
scales a pool from zero up and back to zero with every task run once, a scale-down removes only
idle workers, a 90 s RabbitMQ outage restarts nothing and holds the replicas, and the status
shows what the broker can be read for: in-flight (unacknowledged) counts through the management
API, ready messages only without it.

One RabbitMQ node serves the module (``tests/e2e/rabbit.py``), a virtual host per test (asked for
before the operator, so that it outlives the operator's connections to it). Results
go to the test's Redis; runs are counted from the states the result backend stores
(:class:`tests.e2e.rabbit.RunLog`): a task run twice is STARTED twice, a lost one never
SUCCESS.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import prometheus_client
import pytest
from celery import Celery
from celery.result import AsyncResult
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import naming
from tests.e2e.harness import TASKS, Clusters
from tests.e2e.kube import pod_ready, wait_for
from tests.e2e.rabbit import RunLog, Vhost, exactly_once, rabbit, rabbit_spec, run_log, vhost
from tests.integration.rabbitmq import RabbitServer

__all__ = ["rabbit", "run_log", "vhost"]  # the fixtures, for pytest

BURST: Final = 200
SCALE_DOWN_WINDOW: Final = 8
OUTAGE_SECONDS: Final = 90.0
FLOWING_WITHIN_SECONDS: Final = 15.0
"""From RabbitMQ answering again to the first task done (the node's own start included)."""
QUEUE_UNACKED: Final = "celery_operator_queue_unacked"
QUEUE_BACKLOG_METRIC: Final = "celery_operator_queue_backlog"
BROKER_INFO: Final = "celery_operator_broker_info"
HELD_SECONDS: Final = 300.0
"""How long a task meant to stay in flight sleeps: longer than its test."""


@pytest.fixture
def app(vhost: Vhost, redis_url: str) -> Iterator[Celery]:
    """A producer on the test's virtual host, with the workers' result backend."""
    producer = Celery("e2e-client", broker=vhost.url, backend=redis_url)
    yield producer
    producer.close()


SpecMaker = Callable[..., dict[str, Any]]


@pytest.fixture
def make_spec(
    clusters: Clusters, vhost: Vhost, redis_url: str, worker_image: str, host_network: bool
) -> SpecMaker:
    """A CeleryCluster spec on the test's vhost (its Secrets in place), prefetch 1; keywords
    change workers[0]; beat off unless ``beat=True``; the management API unless
    ``management_api=False``."""

    def make(*, management_api: bool = True, beat: bool = False, **pool: Any) -> dict[str, Any]:
        spec = rabbit_spec(
            clusters,
            vhost,
            redis_url,
            worker_image,
            host_network,
            management_api=management_api,
            prefetchMultiplier=1,
            **pool,
        )
        if not beat:
            spec["beat"] = {"enabled": False}
        return spec

    return make


def _replicas(clusters: Clusters, pool: str = "default") -> int:
    deployment = clusters.deployments()[naming.worker_name("demo", pool)]
    return int(deployment["spec"].get("replicas") or 0)


def _live_pods(clusters: Clusters, pool: str = "default") -> set[str]:
    return {
        p["metadata"]["name"]
        for p in clusters.pods(f"{naming.POOL_LABEL}={pool}")
        if not p["metadata"].get("deletionTimestamp")
    }


def _containers(clusters: Clusters, *components: str) -> dict[str, tuple[str, int]]:
    """The cluster's pods of ``components``: name -> (uid, restarts of its containers)."""
    found = {}
    for pod in clusters.pods(f"{naming.INSTANCE_LABEL}=demo"):
        if pod["metadata"]["labels"].get(naming.COMPONENT_LABEL) not in components:
            continue
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        found[pod["metadata"]["name"]] = (
            pod["metadata"]["uid"],
            sum(int(s.get("restartCount", 0)) for s in statuses),
        )
    return found


def _broker_reachable(clusters: Clusters) -> dict[str, Any]:
    return clusters.condition("demo", "BrokerReachable")


def _sleep(app: Celery, seconds: float, queue: str = "celery") -> AsyncResult:
    return app.send_task(f"{TASKS}.sleep", args=[seconds], queue=queue)


def _metrics(namespace: str, cluster: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's samples for one cluster (it runs in this process, so this registry is
    what its /metrics serves): (name, other labels) -> value."""
    found = {}
    for family in prometheus_client.REGISTRY.collect():
        for sample in family.samples:
            labels = dict(sample.labels)
            if (
                labels.pop("namespace", None) == namespace
                and labels.pop("cluster", None) == cluster
            ):
                found[sample.name, tuple(sorted(labels.items()))] = sample.value
    return found


def test_the_sample_runs_its_tasks_and_beat_on_rabbitmq(
    vhost: Vhost,
    operator: KopfRunner,
    clusters: Clusters,
    redis_url: str,
    app: Celery,
    run_log: RunLog,
    make_spec: SpecMaker,
) -> None:
    """Without a management API: tasks and beat run, and the status says the broker is read
    through the fallback, ready messages only."""
    spec = make_spec(management_api=False, beat=True)
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")

    added = app.send_task(f"{TASKS}.add", args=[2, 3])
    assert added.get(timeout=60) == 5
    failing = app.send_task(f"{TASKS}.fail", args=["on purpose"])
    wait_for(failing.ready, timeout=30, message="the failing task never finished")
    assert failing.failed()
    assert "DemoTaskError" in str(failing.traceback)
    # Beat sends its tick through RabbitMQ every 2 s: tasks nobody here sent start.
    wait_for(
        lambda: set(run_log.starts()) - {added.id, failing.id},
        timeout=30,
        message="beat's tick never ran",
    )

    def read() -> dict[str, Any]:
        status: dict[str, Any] = clusters.get("demo").get("status", {})
        reachable = _broker_reachable(clusters)
        return status if status.get("broker") and reachable.get("status") == "True" else {}

    status = wait_for(read, timeout=30, message=f"BrokerReachable: {_broker_reachable(clusters)}")
    assert status["broker"] == "rabbitmq", status
    reachable = _broker_reachable(clusters)
    # The fallback: AMQP passive declares, which see ready messages only.
    assert "AMQP passive declare" in reachable.get("message", ""), reachable
    assert "unknown without spec.broker.managementApi" in reachable.get("message", ""), reachable
    assert status.get("backlog") == 0, status
    assert "unacked" not in status, status
    samples = _metrics(clusters.namespace, "demo")
    assert samples[BROKER_INFO, (("kind", "rabbitmq"),)] == 1.0
    assert not [k for k in samples if k[0] == QUEUE_UNACKED], samples
    assert vhost.queues()["celery"][2] == 1, vhost.queues()  # the one worker consumes


def test_a_burst_scales_the_pool_from_zero_up_and_back_to_zero(
    vhost: Vhost,
    operator: KopfRunner,
    clusters: Clusters,
    redis_url: str,
    app: Celery,
    run_log: RunLog,
    make_spec: SpecMaker,
) -> None:
    spec = make_spec(
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
        message="the autoscaler never read the pool",
    )
    assert _replicas(clusters) == 0

    results = [_sleep(app, 0.2) for _ in range(BURST)]
    wait_for(lambda: _replicas(clusters) > 0, timeout=30, message="the burst never scaled up")
    wait_for(
        lambda: _replicas(clusters) == 4, timeout=30, message="the pool never reached maxReplicas"
    )
    for result in results:
        result.get(timeout=180)
    assert exactly_once(run_log, [r.id for r in results]) == {}

    wait_for(
        lambda: _replicas(clusters) == 0,
        timeout=SCALE_DOWN_WINDOW + 60,
        message="the idle pool never went back to zero",
    )
    status = clusters.get("demo")["status"]
    assert status["lastScale"].startswith("default "), status
    assert any(m.startswith("pool default: 0 → ") for m in clusters.event_messages("ScaledUp"))
    assert any(" → 0: " in m for m in clusters.event_messages("ScaledDown"))
    assert vhost.queues()["celery"][:2] == (0, 0), vhost.queues()


def test_a_scale_down_removes_only_idle_workers(
    vhost: Vhost,
    operator: KopfRunner,
    clusters: Clusters,
    redis_url: str,
    app: Celery,
    run_log: RunLog,
    make_spec: SpecMaker,
) -> None:
    spec = make_spec(
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

    # Three tasks, one per worker (concurrency 1, prefetch 1): two long ones and a short one.
    long = [_sleep(app, 45.0), _sleep(app, 45.0)]
    short = _sleep(app, 4.0)
    every = [*long, short]
    wait_for(lambda: _replicas(clusters) == 3, timeout=30, message="never scaled to 3")

    def on_three_workers() -> dict[str, str]:
        hosts = run_log.hosts({r.id for r in every})
        return hosts if len(set(hosts.values())) == 3 else {}

    hosts = wait_for(on_three_workers, timeout=60, message="the tasks never ran on three workers")
    busy = {hosts[r.id].split("@", 1)[1] for r in long}

    wait_for(lambda: _replicas(clusters) == 2, timeout=60, message="never scaled down to 2")
    assert not any(r.ready() for r in long), "scaled down only once the long tasks had ended"
    wait_for(lambda: len(_live_pods(clusters)) == 2, timeout=30, message="no pod was removed")
    assert _live_pods(clusters) == busy, "a busy worker was removed"
    for result in every:
        result.get(timeout=120)
    assert exactly_once(run_log, [r.id for r in every]) == {}  # none lost, none run twice


def test_a_90s_rabbitmq_outage_restarts_nothing_and_holds_the_replicas(
    vhost: Vhost,
    operator: KopfRunner,
    clusters: Clusters,
    rabbit: RabbitServer,
    redis_url: str,
    api_client: client.ApiClient,
    app: Celery,
    run_log: RunLog,
    make_spec: SpecMaker,
) -> None:
    """RabbitMQ is killed and started again after 90 s on the same ports and data: its durable
    queues and persistent messages come back, its connections do not. A fixed pool and beat
    (default probes) and an autoscaled pool at two replicas live through it."""
    spec = make_spec(beat=True, replicas=2, concurrency=1)
    spec["workers"].append(
        {
            "name": "auto",
            "queues": ["auto"],
            "concurrency": 1,
            "prefetchMultiplier": 1,
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "scaleDown": {"stabilizationWindowSeconds": 2},
            },
        }
    )
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")

    def fixed_and_beat_ready() -> bool:
        pods = _containers(clusters, naming.WORKER, naming.BEAT)
        return len(pods) == 3 and all(pod_ready(api_client, clusters.namespace, p) for p in pods)

    wait_for(fixed_and_beat_ready, timeout=120, message="the fixed pool and beat never all ran")
    assert app.send_task(f"{TASKS}.add", args=[1, 1]).get(timeout=60) == 2
    held = [_sleep(app, 20.0, queue="auto") for _ in range(2)]
    wait_for(lambda: _replicas(clusters, "auto") == 2, timeout=30, message="never scaled to 2")
    wait_for(
        lambda: len(run_log.hosts({r.id for r in held})) == 2,
        timeout=60,
        message="the autoscaled pool never ran its two tasks",
    )
    before = _containers(clusters, naming.WORKER, naming.BEAT)
    assert len(before) == 5, before
    assert all(restarts == 0 for _, restarts in before.values()), before

    rabbit.stop()
    down_at = time.monotonic()
    try:
        wait_for(
            lambda: _broker_reachable(clusters).get("status") == "False",
            timeout=30,
            message="BrokerReachable never went False",
        )
        went_unready = False
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            assert _containers(clusters, naming.WORKER, naming.BEAT) == before, (
                "a container restarted or a pod was replaced"
            )
            assert _replicas(clusters, "auto") == 2, "the autoscaled pool was scaled on no data"
            assert _replicas(clusters) == 2
            went_unready = went_unready or not any(
                pod_ready(api_client, clusters.namespace, p) for p in _live_pods(clusters)
            )
            time.sleep(3)
    finally:
        rabbit.start()
    back_at = time.monotonic()
    assert went_unready, "the workers stayed Ready without their broker"
    failed_liveness = [
        m for m in clusters.event_messages("Unhealthy") if m.startswith("Liveness probe failed")
    ]
    assert failed_liveness == [], failed_liveness

    # Tasks flow again: a stream of adds from the moment the node answers.
    results: list[AsyncResult] = []
    first_done: float | None = None
    while time.monotonic() - back_at < 20:
        results.append(app.send_task(f"{TASKS}.add", args=[len(results), 1]))
        if first_done is None and any(r.ready() for r in results):
            first_done = time.monotonic() - back_at
        time.sleep(0.2)
    print(  # KopfRunner holds sys.stdout
        f"\nafter a {OUTAGE_SECONDS:g}s RabbitMQ outage: node back in {rabbit.start_seconds:.1f}s,"
        f" first task done {first_done}s after; {len(results)} tasks sent",
        file=sys.__stdout__,
    )
    assert first_done is not None
    assert first_done < FLOWING_WITHIN_SECONDS
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(len(results))]
    wait_for(
        lambda: _broker_reachable(clusters).get("status") == "True",
        timeout=60,
        message="BrokerReachable never True again",
    )
    wait_for(
        lambda: clusters.condition("demo", "ScalingActive").get("status") == "True",
        timeout=60,
        message="the autoscaler never recovered",
    )
    # The held tasks were unacknowledged when the node died: redelivered, they run again.
    for result in held:
        result.get(timeout=120)
    wait_for(
        lambda: _replicas(clusters, "auto") == 0,
        timeout=90,
        message="the autoscaled pool never went back to zero",
    )
    kept = {name: seen for name, seen in before.items() if name not in _live_pods(clusters, "auto")}
    now = _containers(clusters, naming.WORKER, naming.BEAT)
    assert {name: now.get(name) for name in kept} == kept, "a container restarted"
    wait_for(
        lambda: all(pod_ready(api_client, clusters.namespace, p) for p in kept),
        timeout=30,
        message="the fixed pool and beat never became Ready again",
    )


def test_the_management_api_shows_in_flight_tasks(
    vhost: Vhost,
    operator: KopfRunner,
    clusters: Clusters,
    redis_url: str,
    app: Celery,
    make_spec: SpecMaker,
) -> None:
    """One worker with two pool slots takes two of five long tasks: RabbitMQ holds three ready
    and two unacknowledged (late acks), and the operator reports both."""
    spec = make_spec(
        concurrency=2,
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
    )
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    for _ in range(5):
        _sleep(app, HELD_SECONDS)
    wait_for(
        lambda: vhost.queues().get("celery") == (3, 2, 1),
        timeout=60,
        message=f"RabbitMQ never held 3 ready and 2 unacked: {vhost.queues()}",
    )

    def reported() -> dict[str, Any]:
        status: dict[str, Any] = clusters.get("demo").get("status", {})
        return status if (status.get("backlog"), status.get("unacked")) == (3, 2) else {}

    status = wait_for(reported, timeout=30, message="status never showed 3 ready and 2 unacked")
    assert status["broker"] == "rabbitmq", status
    assert status["inFlight"] == 2, status  # what the workers say they hold agrees
    reachable = _broker_reachable(clusters)
    assert reachable["status"] == "True", reachable
    assert reachable["message"].startswith(
        "ready and unacknowledged messages read from the management API"
    ), reachable
    samples = _metrics(clusters.namespace, "demo")
    assert samples[QUEUE_UNACKED, (("queue", "celery"),)] == 2.0, samples
    assert samples[QUEUE_BACKLOG_METRIC, (("queue", "celery"),)] == 3.0, samples
    assert samples[BROKER_INFO, (("kind", "rabbitmq"),)] == 1.0, samples
