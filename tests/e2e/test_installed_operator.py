"""The operator as a user installs it: the image ``cluster/image.sh`` built (the one
``deploy/Dockerfile`` describes), in two pods of its Deployment, on the pod network, with the
ServiceAccount token and the Role of ``deploy/namespaced`` (rendered for the test's namespace,
the image named as ``examples/operator`` names it), reaching the API server through the
``kubernetes`` Service and Redis by its Service's DNS name.

It reconciles a CeleryCluster; a real Prometheus scrapes it through its metrics Service; its
liveness probe passes (no restart, no ``Unhealthy`` event); and deleting the leader's pod in the
middle of a burst, with a stuck worker about to be restarted, hands the Lease to the standby
within 15 s, after which the burst is worked off, every task runs once, each scaling step is
written once, and the stuck worker is restarted once.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis
import yaml
from kubernetes import client

from celery_operator import naming
from tests.e2e.conftest import free_port
from tests.e2e.harness import ROOT, TASKS, Clusters, _celery, demo_spec
from tests.e2e.kube import pod_logs, wait_for
from tests.e2e.rbac import kubectl_apply, kustomize_in_namespace

IMAGE: Final = "localhost/celery-operator/operator:dev"
LEASE: Final = "celery-operator"
TAKEOVER_BUDGET_S: Final = 15.0
BURST: Final = 40
TASK_SECONDS: Final = 1.5
STUCK_AFTER_SECONDS: Final = 15

pytestmark = pytest.mark.e2e


def _local_image() -> str:
    """The image the user's overlay names (examples/operator), so the test runs what
    ``make up`` installs."""
    [overlay] = [
        image
        for image in yaml.safe_load(
            (ROOT / "examples" / "operator" / "kustomization.yaml").read_text()
        )["images"]
        if image["name"] == "celery-operator"
    ]
    return f"{overlay['newName']}:{overlay['newTag']}"


def _operator_pods(core: Any, namespace: str) -> list[Any]:
    selector = "app.kubernetes.io/name=celery-operator,app.kubernetes.io/component=operator"
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _holder(coordination: Any, namespace: str) -> str | None:
    """The pod that holds the Lease (its identity is ``<pod>_<suffix>``), or None."""
    try:
        lease = coordination.read_namespaced_lease(LEASE, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    identity = lease.spec.holder_identity
    return str(identity).rpartition("_")[0] if identity else None


def _redis_service(core: Any, apps: Any, namespace: str) -> str:
    """Redis on the pod network behind a Service, as examples/local runs it; its cluster IP."""
    labels = {"app": "redis"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "redis"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "redis",
                                "image": "localhost/celery-operator/worker:dev",
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["redis-server", "--save", "", "--appendonly", "no",
                                            "--protected-mode", "no"],
                                "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1},
                            }
                        ],
                    },
                },
            },
        },
    )  # fmt: skip
    service = core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "redis"},
            "spec": {"selector": labels, "ports": [{"port": 6379}]},
        },
    )
    ip: str = service.spec.cluster_ip
    wait_for(
        lambda: _answers(f"redis://{ip}:6379/0"),
        timeout=120,
        message="Redis never answered through its Service",
    )
    return ip


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def installed(
    api_client: client.ApiClient, kubeconfig: str, namespace: str, crd: None, tmp_path: Path
) -> str:
    """deploy/namespaced in the test's namespace with the local image (the namespace fixture
    deletes it all); the namespace."""
    docs = kustomize_in_namespace(ROOT / "deploy" / "namespaced", namespace, tmp_path / "overlay")
    for doc in docs:
        if doc["kind"] == "Deployment":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            container["image"] = _local_image()
    kubectl_apply(kubeconfig, docs)
    return namespace


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
        except OSError:
            return []
        results: list[dict[str, Any]] = body["data"]["result"]
        return results


@pytest.fixture
def prometheus_of(tmp_path: Path) -> Iterator[Any]:
    """Starts Prometheus scraping a target every second; stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {"job_name": "celery-operator", "static_configs": [{"targets": [target]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("w")
        processes.append(
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return Prometheus(port)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def test_the_installed_operator_reconciles_is_scraped_and_hands_over_within_15s(
    api_client: client.ApiClient,
    installed: str,
    clusters: Clusters,
    worker_image: str,
    prometheus_of: Any,
) -> None:
    namespace = installed
    # Any: the client's models make every field optional, which would bury the test in checks.
    core: Any = client.CoreV1Api(api_client)
    apps: Any = client.AppsV1Api(api_client)
    coordination: Any = client.CoordinationV1Api(api_client)

    # Two pods, both Ready (their /healthz answers), one of them holding the Lease.
    def two_ready() -> list[Any]:
        pods = _operator_pods(core, namespace)
        return pods if len(pods) == 2 and all(_ready(p) for p in pods) else []

    pods: list[Any] = wait_for(
        two_ready, timeout=180, message="the operator's two pods never became Ready"
    )
    assert {p.spec.containers[0].image for p in pods} == {_local_image()}
    assert all(not p.spec.host_network for p in pods)
    leader = wait_for(
        lambda: _holder(coordination, namespace), timeout=30, message="nobody took the Lease"
    )
    assert leader is not None
    assert leader in {p.metadata.name for p in pods}

    # It reconciles: a CeleryCluster on the pod network, Redis by its Service's DNS name.
    redis_ip = _redis_service(core, apps, namespace)
    clusters.put_secret("broker", {"url": f"redis://redis.{namespace}.svc:6379/0"})
    spec = demo_spec(worker_image, host_network=False, concurrency=2)
    spec["workers"] += [
        {"name": "burst", "queues": ["burst"], "concurrency": 2,
         "autoscaling": {"minReplicas": 0, "maxReplicas": 3,
                         "scaleDown": {"stabilizationWindowSeconds": 5}}},
        {"name": "stuck", "queues": ["stuck"], "replicas": 1, "concurrency": 1,
         "terminationGracePeriodSeconds": 5,
         "hungWorkers": {"stuckAfterSeconds": STUCK_AFTER_SECONDS}},
    ]  # fmt: skip
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available", timeout=240)
    app = _celery(f"redis://{redis_ip}:6379/0")
    assert app.send_task(f"{TASKS}.add", args=[20, 22]).get(timeout=60) == 42

    # Prometheus scrapes it through its metrics Service.
    [service] = [
        s
        for s in core.list_namespaced_service(namespace).items
        if s.metadata.name == "celery-operator-metrics"
    ]
    prometheus = prometheus_of(f"{service.spec.cluster_ip}:9090")
    wait_for(
        lambda: prometheus.query('up{job="celery-operator"} == 1'),
        timeout=60,
        message="Prometheus never scraped the operator through its Service",
    )
    wait_for(
        lambda: prometheus.query(f'celery_operator_pool_replicas{{namespace="{namespace}"}}'),
        timeout=60,
        message="the leader's per-cluster series never reached Prometheus",
    )

    # The liveness probe passes: at least two of its periods ran (20 s each) without a restart
    # or a failure. (Readiness may fail once while the process starts: that only delays Ready.)
    started = min(p.status.start_time for p in pods)
    time.sleep(max(0.0, 45 - (time.time() - started.timestamp())))
    for pod in _operator_pods(core, namespace):
        assert all(s.restart_count == 0 for s in pod.status.container_statuses), pod.metadata.name
    unhealthy = [
        e.message
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "Unhealthy"
        and e.message.startswith("Liveness")
        and e.involved_object.name in {p.metadata.name for p in pods}
    ]
    assert not unhealthy, unhealthy

    # A worker gets stuck (its one slot in an endless task while work waits), and a burst
    # comes; once the burst's pool is scaling, the leader's pod is deleted: the scaling and the
    # hung-worker restart are in flight across the handover.
    [stuck_pod] = [
        p.metadata.name
        for p in core.list_namespaced_pod(
            namespace, label_selector=f"{naming.POOL_LABEL}=stuck"
        ).items
    ]
    app.send_task(f"{TASKS}.sleep", args=[3600], queue="stuck")
    waiting = [
        app.send_task(f"{TASKS}.record", args=["unstuck", str(i)], queue="stuck").id
        for i in range(3)
    ]
    key = "handover"
    ids = [
        app.send_task(f"{TASKS}.record_after", args=[key, str(i), TASK_SECONDS], queue="burst").id
        for i in range(BURST)
    ]
    worker = naming.worker_name("demo", "burst")
    wait_for(
        lambda: (apps.read_namespaced_deployment(worker, namespace).spec.replicas or 0) >= 1,
        timeout=30,
        message="the burst never woke the pool",
    )
    deleted_at = time.monotonic()
    core.delete_namespaced_pod(leader, namespace)

    def new_holder() -> str | None:
        holder = _holder(coordination, namespace)
        return holder if holder and holder != leader else None

    standby = wait_for(new_holder, timeout=60, message="the standby never took the Lease")
    assert standby is not None
    took = time.monotonic() - deleted_at
    print(f"\nleader pod deleted: the standby held the Lease after {took:.1f} s")
    assert took <= TAKEOVER_BUDGET_S, f"takeover took {took:.1f} s"

    # The burst is worked off by the new leader, every task once, and the pool goes back to 0.
    for task_id in ids:
        app.AsyncResult(task_id).get(timeout=180)
    broker = redis.Redis.from_url(f"redis://{redis_ip}:6379/0")
    assert broker.scard(f"{key}:tokens") == BURST  # none lost
    assert int(broker.get(f"{key}:runs") or 0) == BURST  # none run twice
    wait_for(
        lambda: apps.read_namespaced_deployment(worker, namespace).spec.replicas == 0,
        timeout=180,
        message="the pool never went back to zero after the handover",
    )
    # The stuck worker was restarted once, by whichever leader judged it, and its queue drained.
    for task_id in waiting:
        app.AsyncResult(task_id).get(timeout=180)
    assert broker.scard("unstuck:tokens") == 3
    assert int(broker.get("unstuck:runs") or 0) == 3
    restarts = [
        (e.message, e.count or 1)
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "RestartedHungWorker"
    ]
    assert len(restarts) == 1, restarts
    message, count = restarts[0]
    assert f"deleted pod {stuck_pod}" in message, message
    assert count == 1, restarts
    # Each scaling step was written once: no Event counted twice, no step repeated.
    steps = [
        (e.reason, e.message, e.count or 1)
        for e in core.list_namespaced_event(namespace).items
        if e.reason in ("ScaledUp", "ScaledDown") and "burst" in (e.message or "")
    ]
    assert steps, "no scaling Event"
    assert all(count == 1 for _, _, count in steps), steps
    assert len({(r, m) for r, m, _ in steps}) == len(steps), steps
    # Nothing restarted a worker on the way.
    for pod in core.list_namespaced_pod(
        namespace, label_selector=f"{naming.COMPONENT_LABEL}={naming.WORKER}"
    ).items:
        assert all(s.restart_count == 0 for s in pod.status.container_statuses or []), (
            pod.metadata.name
        )
    log = pod_logs(api_client, namespace, standby)
    assert "Traceback" not in log
    assert "forbidden" not in log.lower()
