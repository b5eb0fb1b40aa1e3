"""The probes on a real kubelet: a stopped worker is restarted, a busy one is left alone.

The operator builds the pods (``celery-probe run`` and exec probes) from a CeleryCluster; the
kubelet runs the checks in the worker image. The worker's main process is stopped from inside its
pod (``kubectl exec``), as a hung process would be, by the PID it wrote to its probe state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.stream import stream

from celery_operator import naming
from celery_operator.builders import PROBE_STATE_DIR
from tests.e2e.harness import TASKS, Clusters, _celery
from tests.e2e.kube import pod_ready, wait_for

LONG_TASK_SECONDS = 45
"""Longer than the liveness window below (5 s heartbeat + 2 x 2 s) several times over."""

STOP_MAIN_PROCESS = (
    f"kill -STOP $(python3 -c \"import json; print(json.load(open('{PROBE_STATE_DIR}/worker.json'))"
    "['pid'])\")"
)


def _exec(api_client: client.ApiClient, namespace: str, pod: str, script: str) -> str:
    core = client.CoreV1Api(api_client)
    output: str = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=["sh", "-c", script],
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )
    return output


def _restarts(pod: dict[str, Any]) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount", 0))


def test_kubelet_restarts_a_stopped_worker_and_spares_a_busy_one(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    api_client: client.ApiClient,
) -> None:
    spec = sample_spec(replicas=2, concurrency=1)
    spec["beat"] = {"enabled": False}
    spec["probes"] = {
        "workerLiveness": {"periodSeconds": 2, "failureThreshold": 2, "timeoutSeconds": 2}
    }
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    pods = {p["metadata"]["name"]: p for p in clusters.pods(f"{naming.POOL_LABEL}=default")}
    assert len(pods) == 2
    assert all(_restarts(p) == 0 for p in pods.values())

    app = _celery(redis_url)
    result = app.send_task(f"{TASKS}.sleep", args=[LONG_TASK_SECONDS])

    def busy_node() -> str:
        for node, tasks in (app.control.inspect(timeout=2).active() or {}).items():
            if tasks:
                return str(node)
        return ""

    busy_name = wait_for(busy_node, timeout=60, message="no worker started the long task")
    busy = busy_name.split("@")[1]
    [idle] = set(pods) - {busy}

    _exec(api_client, clusters.namespace, idle, STOP_MAIN_PROCESS)

    def restarted(name: str) -> bool:
        [pod] = [
            p
            for p in clusters.pods(f"{naming.POOL_LABEL}=default")
            if p["metadata"]["name"] == name
        ]
        return _restarts(pod) >= 1

    wait_for(
        lambda: restarted(idle), timeout=90, message=f"the stopped worker {idle} was not restarted"
    )
    wait_for(
        lambda: pod_ready(api_client, clusters.namespace, idle),
        timeout=90,
        message=f"the restarted worker {idle} did not become ready",
    )
    messages = " ".join(clusters.event_messages("Unhealthy", involved=idle))
    assert "no heartbeat" in messages, messages  # the probe's own words reach the user

    assert result.get(timeout=LONG_TASK_SECONDS + 30) == LONG_TASK_SECONDS
    assert not restarted(busy), f"the busy worker {busy} was restarted"
    app.close()
