"""A Service with a pod behind it, for the e2e tests of Services and cluster DNS."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.e2e.kube import describe_pod, pod_ready, wait_for

REDIS_PORT = 6379


def default_service_account(api: client.ApiClient, namespace: str) -> None:
    """Wait for the namespace's ``default`` ServiceAccount: pods that mount its token are refused
    until the controller manager has made it."""
    core = client.CoreV1Api(api)
    wait_for(
        lambda: core.read_namespaced_service_account("default", namespace),
        timeout=30,
        message=f"the default ServiceAccount of {namespace}",
    )


def serve_redis(api: client.ApiClient, namespace: str, image: str) -> str:
    """A Redis pod ``redis`` on the pod network behind a ClusterIP Service ``redis`` (port 6379),
    Ready: the Service's cluster IP."""
    container = client.V1Container(
        name="redis",
        image=image,
        image_pull_policy="IfNotPresent",
        command=["redis-server", "--port", str(REDIS_PORT), "--save", "", "--protected-mode", "no"],
        readiness_probe=client.V1Probe(
            tcp_socket=client.V1TCPSocketAction(port=REDIS_PORT), period_seconds=1
        ),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="redis", labels={"app": "redis"}),
        spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=1),
    )
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name="redis"),
        spec=client.V1ServiceSpec(
            selector={"app": "redis"}, ports=[client.V1ServicePort(port=REDIS_PORT)]
        ),
    )
    core = client.CoreV1Api(api)
    default_service_account(api, namespace)
    core.create_namespaced_pod(namespace, pod)
    created = core.create_namespaced_service(namespace, service)
    try:
        wait_for(lambda: pod_ready(api, namespace, "redis"), timeout=60)
    except AssertionError:
        pytest.fail(f"Redis never became Ready:\n{describe_pod(api, namespace, 'redis')}")
    assert created.spec
    return str(created.spec.cluster_ip)
