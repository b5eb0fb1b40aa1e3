"""Restricted pods and pods that cannot be created, on the real cluster.

The sample runs in a namespace that enforces the ``restricted`` Pod Security Standard, on the
local cluster's pod network (no hostNetwork, which ``restricted`` refuses): the API server's own
admission is the check. Pods refused by admission or by a ResourceQuota show in status, with the
controller's reason and message, and in an Event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import builders, naming
from tests.e2e.harness import TASKS, Clusters, _celery, demo_spec
from tests.e2e.kube import describe_pod, pod_ready, wait_for

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
REDIS_ARGS = ["--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
RESTRICTED_CONTAINER = client.V1SecurityContext(
    allow_privilege_escalation=False,
    capabilities=client.V1Capabilities(drop=["ALL"]),
    run_as_non_root=True,
    run_as_user=builders.IMAGE_USER,
    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
)


def _bridged_redis(core: client.CoreV1Api, namespace: str, image: str) -> str:
    """A Redis pod that the restricted standard admits, on the pod network: its URL (the pod's
    own address, which pods, the operator and this process all reach)."""
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="redis", labels={"app": "redis"}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="redis",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["redis-server"],
                    args=REDIS_ARGS,
                    security_context=RESTRICTED_CONTAINER,
                    readiness_probe=client.V1Probe(
                        tcp_socket=client.V1TCPSocketAction(port=6379), period_seconds=1
                    ),
                )
            ],
            automount_service_account_token=False,
            termination_grace_period_seconds=1,
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    try:
        wait_for(lambda: pod_ready(core.api_client, namespace, "redis"), timeout=60)
    except AssertionError:
        described = describe_pod(core.api_client, namespace, "redis")
        pytest.fail(f"Redis never became Ready:\n{described}")
    status = core.read_namespaced_pod("redis", namespace).status
    address = status.pod_ip if status else None
    assert address, "Redis has no pod address"
    assert not address.startswith("127."), f"Redis is not on the pod network: {address}"
    return f"redis://{address}:6379/0"


def _both_refused(clusters: Clusters, name: str) -> dict[str, Any]:
    """The Degraded condition once status reports the pool's and beat's failures (the
    Deployment's condition and the StatefulSet's Event come in either order)."""
    status = clusters.get(name).get("status", {})
    pools = status.get("pools") or [{}]
    if "replicaFailure" not in pools[0] or "beatFailure" not in status:
        return {}
    condition = clusters.condition(name, "Degraded")
    return condition if condition.get("reason") == "FailedCreate" else {}


def test_the_sample_runs_where_the_restricted_standard_is_enforced(
    operator: KopfRunner,
    api_client: client.ApiClient,
    clusters: Clusters,
    namespace: str,
    worker_image: str,
) -> None:
    core = client.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    url = _bridged_redis(core, namespace, worker_image)
    clusters.put_secret("broker", {"url": url})

    # Host networking is what the restricted standard refuses first: status says so.
    clusters.create("demo", demo_spec(worker_image, host_network=True))
    condition = wait_for(
        lambda: _both_refused(clusters, "demo"), timeout=90, message="the refusal was not reported"
    )
    assert "violates PodSecurity" in condition["message"], condition
    assert "pool default:" in condition["message"], condition
    assert "beat:" in condition["message"], condition
    status = clusters.get("demo")["status"]
    assert status["pools"][0]["replicaFailure"]["reason"] == "FailedCreate"
    assert "hostNetwork" in status["beatFailure"]["message"]
    assert any("violates PodSecurity" in m for m in clusters.event_messages("FailedCreate", "demo"))

    # The operator's defaults, and nothing else, make the pods admissible.
    clusters.patch_spec("demo", {"podTemplate": {"hostNetwork": False}})
    clusters.wait_phase("demo", "Available", timeout=180)
    status = clusters.get("demo")["status"]
    assert "beatFailure" not in status
    assert "replicaFailure" not in status["pools"][0]
    pods = clusters.pods(f"{naming.INSTANCE_LABEL}=demo")
    assert {p["metadata"]["name"] for p in pods} >= {"demo-beat-0"}
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == builders.IMAGE_USER
        assert spec["automountServiceAccountToken"] is False
        assert not any(v.get("projected") for v in spec.get("volumes") or []), "a token volume"
        assert not pod["status"]["podIP"].startswith("127."), "not on the pod network"

    app = _celery(url)
    assert app.send_task(f"{TASKS}.add", args=(20, 22)).get(timeout=60) == 42
    counter = redis.Redis.from_url(url)
    wait_for(
        lambda: int(counter.get("celery_demo:beat_ticks") or 0) >= 2,
        timeout=90,
        message="beat's scheduled task never ran",
    )
    assert clusters.condition("demo", "BrokerReachable")["status"] == "True"  # the operator too
    app.close()


def test_a_quota_that_forbids_the_pods_is_reported(
    operator: KopfRunner,
    api_client: client.ApiClient,
    clusters: Clusters,
    namespace: str,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    core = client.CoreV1Api(api_client)
    used = len(core.list_namespaced_pod(namespace).items)  # Redis
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-more-pods"),
        spec=client.V1ResourceQuotaSpec(hard={"pods": str(used)}),
    )
    core.create_namespaced_resource_quota(namespace, quota)

    def counted() -> bool:  # admission refuses everything until the quota controller has counted
        status = core.read_namespaced_resource_quota("no-more-pods", namespace).status
        return bool(status and (status.used or {}).get("pods") == str(used))

    wait_for(counted, timeout=60, message="the quota was never counted")

    clusters.create("demo", sample_spec())
    condition = wait_for(
        lambda: _both_refused(clusters, "demo"), timeout=90, message="the quota was not reported"
    )
    assert "exceeded quota: no-more-pods" in condition["message"], condition
    status = clusters.get("demo")["status"]
    assert (status["phase"], status["workers"], status["beat"]) == ("Degraded", "0/1", "NotReady")
    assert "exceeded quota" in status["pools"][0]["replicaFailure"]["message"]
    assert "exceeded quota" in status["beatFailure"]["message"]
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=demo,reason=FailedCreate"
    ).items
    assert [e.type for e in events] == ["Warning"], "one warning Event for the transition"
