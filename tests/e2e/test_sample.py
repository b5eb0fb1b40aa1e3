"""The sample a user applies (``make up``'s ``examples/local``, or ``examples/kind`` on a cluster
with a pod network), rendered with kustomize as ``kubectl apply -k`` would: it runs as written,
its workers and beat under the ``restricted`` Pod Security Standard that its namespace enforces.

Only the names that would collide with a demo already running on this machine change: the two
namespaces (the test's own) and the broker's port.
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
SAMPLE_PORT = "6390"


@pytest.fixture
def broker_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """The test's stand-in for ``celery-demo-broker``, made by the sample's own manifest."""
    name = f"{namespace}-b"
    yield name
    _delete_namespace(client.CoreV1Api(api_client), name)


def _rendered(sample: str, namespace: str, broker_namespace: str, port: int) -> list[Any]:
    out = subprocess.run(
        [*_kubectl(), "kustomize", str(ROOT / "examples" / sample)],
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
    text = text.replace(f"'{SAMPLE_PORT}'", f"'{port}'").replace(f":{SAMPLE_PORT}/", f":{port}/")
    assert SAMPLE_PORT not in text, "the sample's port was not replaced everywhere"
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
    port = free_port()
    sample = "local" if host_network else "kind"  # as scripts/up.sh chooses
    docs = _rendered(sample, namespace, broker_namespace, port)
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

    with _broker_from_here(broker_namespace, port, host_network) as local:
        app = _celery(f"redis://127.0.0.1:{local}/0")
        assert app.send_task(f"{TASKS}.add", args=(20, 22)).get(timeout=60) == 42
        app.close()


@contextlib.contextmanager
def _broker_from_here(broker_namespace: str, port: int, host_network: bool) -> Iterator[int]:
    """The sample's Redis port on this machine: its own under host networking, else through
    ``kubectl port-forward`` to the Redis Deployment."""
    if host_network:
        yield port
        return
    local = free_port()
    forward = subprocess.Popen(
        [*_kubectl(), "port-forward", "-n", broker_namespace, "deployment/redis",
         f"{local}:{port}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(local), timeout=30, message="kubectl port-forward to Redis")
        yield local
    finally:
        forward.terminate()
        forward.wait(timeout=10)
