"""The sample a user applies (``examples/local``, the same on the local cluster and on kind),
rendered with kustomize as ``kubectl apply -k`` would: it runs as written, its workers and beat
under the ``restricted`` Pod Security Standard that its namespace enforces, reaching Redis by its
Service's DNS name.

Only the names that would collide with a demo already running on this cluster change: the two
namespaces (the test's own).
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client, utils

from celery_operator import naming
from tests.e2e.conftest import _accepts, _delete_namespace, _kubectl, free_port
from tests.e2e.harness import ROOT, TASKS, Clusters, _celery
from tests.e2e.kube import wait_for

SAMPLE_NAMESPACE = "celery-demo"
BROKER_NAMESPACE = "celery-demo-broker"
SAMPLE_PORT = 6379


@pytest.fixture
def broker_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """The test's stand-in for ``celery-demo-broker``, made by the sample's own manifest."""
    name = f"{namespace}-b"
    yield name
    _delete_namespace(client.CoreV1Api(api_client), name)


def _rendered(namespace: str, broker_namespace: str) -> list[Any]:
    out = subprocess.run(
        [*_kubectl(), "kustomize", str(ROOT / "examples" / "local")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Secrets hold base64: decode, rename, and let the client encode again.
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"] = {
                k: base64.b64decode(v).decode() for k, v in doc.pop("data", {}).items()
            }
    text = yaml.safe_dump_all(docs)
    text = text.replace(BROKER_NAMESPACE, broker_namespace).replace(SAMPLE_NAMESPACE, namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def test_the_sample_runs_as_written_under_the_restricted_standard(
    operator: KopfRunner,
    api_client: client.ApiClient,
    clusters: Clusters,
    namespace: str,
    broker_namespace: str,
    host_network: bool,
) -> None:
    core = client.CoreV1Api(api_client)
    docs = _rendered(namespace, broker_namespace)
    clusters_docs = [d for d in docs if d["kind"] == "CeleryCluster"]
    for doc in docs:
        if doc["kind"] == "Namespace" and doc["metadata"]["name"] == namespace:
            core.patch_namespace(namespace, {"metadata": {"labels": doc["metadata"]["labels"]}})
        elif doc["kind"] != "CeleryCluster":
            utils.create_from_dict(api_client, doc)  # type: ignore[no-untyped-call]
    labels = clusters.plain(core.read_namespace(namespace))["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    [cluster] = clusters_docs
    clusters.create(cluster["metadata"]["name"], cluster["spec"])
    clusters.wait_phase("demo", "Available", timeout=240)
    pods = clusters.pods(f"{naming.INSTANCE_LABEL}=demo")
    assert pods, "the sample has no pods"
    for pod in pods:
        assert not pod["spec"].get("hostNetwork"), pod["metadata"]["name"]

    with _broker_from_here(core, broker_namespace, host_network) as address:
        app = _celery(f"redis://{address}/0")
        assert app.send_task(f"{TASKS}.add", args=(20, 22)).get(timeout=60) == 42
        app.close()


@contextlib.contextmanager
def _broker_from_here(
    core: client.CoreV1Api, broker_namespace: str, local_cluster: bool
) -> Iterator[str]:
    """Where this process reaches the sample's Redis (host:port): on the local cluster, whose
    node this process runs on, the Service's cluster IP (kube-proxy); elsewhere through
    ``kubectl port-forward`` to the Redis Deployment."""
    if local_cluster:
        service = core.read_namespaced_service("redis", broker_namespace)
        assert service.spec
        yield f"{service.spec.cluster_ip}:{SAMPLE_PORT}"
        return
    local = free_port()
    forward = subprocess.Popen(
        [*_kubectl(), "port-forward", "-n", broker_namespace, "deployment/redis",
         f"{local}:{SAMPLE_PORT}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(local), timeout=30, message="kubectl port-forward to Redis")
        yield f"127.0.0.1:{local}"
    finally:
        forward.terminate()
        forward.wait(timeout=10)
