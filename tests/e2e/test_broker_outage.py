"""A 90 s Redis outage on the real cluster: no container restarted, no pod replaced, and tasks
flow again within seconds of Redis returning (issue 12).

Redis is a Pod in the test's namespace. It is deleted (its redis-server gets SIGTERM and closes
every connection, as a broker that goes away does) and created again on the same port after
90 s, empty, as a managed Redis comes back from a failover. Throughout, the kubelet runs the
default probes (``celery-probe worker-live`` every 10 s, 3 failures to restart): past the 30 s
broker grace they try the broker themselves, find it unreachable from the pod too, and pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import redis
from celery.result import AsyncResult
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.stream import stream

from celery_operator import naming
from celery_operator.builders import PROBE_COMMAND
from tests.e2e.conftest import recreate_redis
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import pod_ready, wait_for

WORKERS: Final = 3
OUTAGE_SECONDS: Final = 90.0
FLOWING_WITHIN_SECONDS: Final = 10.0
"""Issue 12's target: from Redis answering again to the first task done."""
BEAT_TICKS_KEY: Final = "celery_demo:beat_ticks"
ASK_AFTER_SECONDS: Final = 50.0
"""Past the 30 s broker grace and beat's 15 s: both checks have had to try the broker."""


def _containers(clusters: Clusters) -> dict[str, tuple[str, int]]:
    """Every worker and beat pod of the cluster: name -> (uid, its container's restart count)."""
    found = {}
    for pod in clusters.pods(f"{naming.INSTANCE_LABEL}=demo"):
        component = pod["metadata"]["labels"].get(naming.COMPONENT_LABEL)
        if component not in (naming.WORKER, naming.BEAT):
            continue
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        found[pod["metadata"]["name"]] = (
            pod["metadata"]["uid"],
            sum(int(s.get("restartCount", 0)) for s in statuses),
        )
    return found


def _workers_ready(clusters: Clusters, api_client: client.ApiClient) -> list[bool]:
    return [
        pod_ready(api_client, clusters.namespace, pod["metadata"]["name"])
        for pod in clusters.pods(f"{naming.POOL_LABEL}=default")
    ]


def _check(api_client: client.ApiClient, namespace: str, pod: str, check: str) -> str:
    """The line ``celery-probe <check>`` prints in ``pod``, run as the kubelet runs it."""
    output: str = stream(
        client.CoreV1Api(api_client).connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=[PROBE_COMMAND, check],
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )
    return output.strip()


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


def test_a_90s_redis_outage_restarts_nothing_and_tasks_flow_again_within_seconds(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    api_client: client.ApiClient,
    worker_image: str,
    host_network: bool,
) -> None:
    clusters.create("demo", sample_spec(replicas=WORKERS))  # default probes; beat every 2 s
    clusters.wait_phase("demo", "Available")
    wait_for(
        lambda: (
            len(_containers(clusters)) == WORKERS + 1 and all(_workers_ready(clusters, api_client))
        ),
        timeout=120,
        message="the workers and beat never all ran",
    )
    app = _celery(redis_url)
    assert app.send_task(f"{TASKS}.add", args=[1, 1]).get(timeout=60) == 2
    before = _containers(clusters)
    assert all(restarts == 0 for _, restarts in before.values()), before

    core = client.CoreV1Api(api_client)
    core.delete_namespaced_pod("redis", clusters.namespace, grace_period_seconds=1)
    wait_for(lambda: not _answers(redis_url), timeout=30, message="Redis never went away")
    down_at = time.monotonic()
    went_unready = False
    lines: dict[str, str] = {}
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        assert _containers(clusters) == before, "a container restarted or a pod was replaced"
        went_unready = went_unready or not any(_workers_ready(clusters, api_client))
        if not lines and time.monotonic() - down_at > ASK_AFTER_SECONDS:
            for pod in before:
                beat = pod.startswith(naming.beat_name("demo"))
                check = "beat-live" if beat else "worker-live"
                lines[pod] = _check(api_client, clusters.namespace, pod, check)
        time.sleep(3)
    assert went_unready, "the workers stayed Ready without their broker"
    # Each worker's own check tried the broker, from the URL in its environment, and waited.
    # Beat passes too: ticking (a publish gives up after its retries) or waiting on its tick.
    host = urlsplit(redis_url).netloc
    waiting = (
        f"ok: broker unreachable from this pod too (redis://{host}: connection refused):"
        " waiting for it, not restarting"
    )
    beat_line = lines.pop(f"{naming.beat_name('demo')}-0")
    assert beat_line.startswith(("ok: scheduler ticking", waiting)), beat_line
    assert lines == dict.fromkeys(lines, waiting), lines
    assert len(lines) == WORKERS
    failed_liveness = [
        m for m in clusters.event_messages("Unhealthy") if m.startswith("Liveness probe failed")
    ]
    assert failed_liveness == [], failed_liveness

    # Redis comes back on the same port, empty: a task stream starts the moment it answers.
    recreate_redis(core, clusters.namespace, redis_url, worker_image, host_network)
    wait_for(lambda: _answers(redis_url), timeout=60, interval=0.1, message="Redis never returned")
    back_at = time.monotonic()
    results: list[AsyncResult] = []
    first_done: float | None = None
    all_answer: float | None = None
    while time.monotonic() - back_at < 20:
        results.append(app.send_task(f"{TASKS}.add", args=[len(results), 1]))
        now = time.monotonic() - back_at
        if first_done is None and any(r.ready() for r in results):
            first_done = now
        if all_answer is None and len(app.control.ping(timeout=0.3) or []) == WORKERS:
            all_answer = now
        time.sleep(0.2)
    print(  # KopfRunner holds sys.stdout
        f"\nafter a {OUTAGE_SECONDS:g}s outage: first task done {first_done}s, every worker"
        f" answering ping {all_answer}s after Redis returned; {len(results)} tasks sent",
        file=sys.__stdout__,
    )
    assert first_done is not None
    assert first_done < FLOWING_WITHIN_SECONDS
    assert all_answer is not None
    assert all_answer < FLOWING_WITHIN_SECONDS
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(len(results))]
    assert int(redis.Redis.from_url(redis_url).get(BEAT_TICKS_KEY) or 0) > 0, "beat never ticked"
    wait_for(
        lambda: all(_workers_ready(clusters, api_client)),
        timeout=30,
        message="the workers never became Ready again",
    )
    assert _containers(clusters) == before, "a container restarted or a pod was replaced"
    app.close()
