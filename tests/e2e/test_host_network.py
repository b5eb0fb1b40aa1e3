"""``podTemplate.hostNetwork``: a CeleryCluster whose pods run in the node's network namespace.

Most e2e tests on the local cluster run their workers so; this test is about the option itself:
the pods share the node's address, keep resolving cluster names (the operator sets
``dnsPolicy: ClusterFirstWithHostNet``), and reach a broker behind a Service through kube-proxy
on the node.
"""

from __future__ import annotations

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.stream import stream

from celery_operator import naming
from tests.e2e.harness import TASKS, Clusters, _celery, demo_spec
from tests.e2e.services import REDIS_PORT, serve_redis

RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


def _exec(api_client: client.ApiClient, namespace: str, pod: str, command: list[str]) -> str:
    output: str = stream(
        client.CoreV1Api(api_client).connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=command,
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )
    return output


def test_host_network_pods_use_the_nodes_address_and_still_resolve_services(
    operator: KopfRunner,
    api_client: client.ApiClient,
    clusters: Clusters,
    namespace: str,
    worker_image: str,
    host_network: bool,
) -> None:
    if not host_network:
        pytest.skip(
            "the broker's cluster IP must be reachable from this process: the local cluster"
        )
    cluster_ip = serve_redis(api_client, namespace, worker_image)
    url = f"redis://{cluster_ip}:{REDIS_PORT}/0"  # the operator here and the pods on the node
    clusters.put_secret("broker", {"url": url})

    clusters.create("demo", demo_spec(worker_image, host_network=True))
    clusters.wait_phase("demo", "Available")

    pods = clusters.pods(f"{naming.INSTANCE_LABEL}=demo")
    assert {p["metadata"]["name"] for p in pods} >= {"demo-beat-0"}
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"]["hostNetwork"] is True, name
        assert pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet", name
        assert pod["status"]["podIP"] == pod["status"]["hostIP"], name
    worker = next(p["metadata"]["name"] for p in pods if "-worker-" in p["metadata"]["name"])
    resolved = _exec(api_client, namespace, worker, ["python3", "-c", RESOLVE, "redis"])
    assert resolved.strip() == cluster_ip, resolved

    app = _celery(url)
    assert app.send_task(f"{TASKS}.add", args=(20, 22)).get(timeout=60) == 42
    app.close()
