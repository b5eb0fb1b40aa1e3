"""The operator end to end: a real API server, real controllers, a real kubelet, real Celery.

The operator runs in this process through ``kopf.testing.KopfRunner``, each test in a namespace
of its own that it alone watches. Nothing waits by sleeping: every check polls a condition.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import naming
from celery_operator.brokers import Broker, Brokers
from celery_operator.kube import Kube
from celery_operator.reconciler import Reconciler
from tests.e2e import rbac
from tests.e2e.harness import (
    ROOT,
    TASKS,
    Clusters,
    _celery,
    _healthy,
    run_operator_as,
    use_every_verb,
)
from tests.e2e.kube import wait_for


def test_sample_runs_tasks_and_beat(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
) -> None:
    clusters.create("demo", sample_spec(replicas=2))
    clusters.wait_phase("demo", "Available")
    status = clusters.get("demo")["status"]
    assert (status["workers"], status["beat"]) == ("2/2", "Ready")
    assert isinstance(status["backlog"], int)

    app = _celery(redis_url)
    result = app.send_task(f"{TASKS}.add", args=(20, 22))
    assert result.get(timeout=60) == 42

    # Beat sends beat_tick every 2 s; the workers run it and count it in Redis.
    counter = redis.Redis.from_url(redis_url)
    wait_for(
        lambda: int(counter.get("celery_demo:beat_ticks") or 0) >= 2,
        timeout=90,
        message="beat's scheduled task never ran",
    )
    beat_pods = clusters.pods(f"{naming.COMPONENT_LABEL}=beat")
    assert [p["metadata"]["name"] for p in beat_pods] == ["demo-beat-0"]

    worker_pods = clusters.pods(f"{naming.POOL_LABEL}=default")
    nodes = set(app.control.inspect(timeout=5).ping() or {})
    assert nodes == {f"default@{p['metadata']['name']}" for p in worker_pods}


def test_second_reconcile_of_an_unchanged_cluster_writes_nothing(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    api_client: client.ApiClient,
) -> None:
    spec = sample_spec()
    spec["beat"] = {"enabled": False}  # no scheduled tasks: the backlog in status stays put
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    before = {n: d["metadata"]["resourceVersion"] for n, d in clusters.deployments().items()}
    cluster_version = clusters.get("demo")["metadata"]["resourceVersion"]
    brokers = Brokers(lambda key: Broker(key, timeout=2.0, census_timeout=2.0))
    reconciler = Reconciler(Kube(api_client), brokers)
    try:
        first = reconciler.reconcile(clusters.namespace, "demo")
        second = reconciler.reconcile(clusters.namespace, "demo")
    finally:
        brokers.close()
    assert (first.writes, second.writes) == (0, 0), (first, second)
    after = {n: d["metadata"]["resourceVersion"] for n, d in clusters.deployments().items()}
    assert after == before
    assert clusters.get("demo")["metadata"]["resourceVersion"] == cluster_version


def test_changing_concurrency_rolls_the_pool(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    clusters.create("demo", sample_spec())
    clusters.wait_phase("demo", "Available")
    old_pods = {p["metadata"]["name"] for p in clusters.pods(f"{naming.POOL_LABEL}=default")}

    clusters.patch_spec("demo", sample_spec(concurrency=3))

    def rolled() -> bool:
        pods = clusters.pods(f"{naming.POOL_LABEL}=default")
        return (
            clusters.phase("demo") == "Available"
            and bool(pods)
            and not {p["metadata"]["name"] for p in pods} & old_pods
            and all(p["status"]["phase"] == "Running" for p in pods)
        )

    wait_for(rolled, timeout=180, message="the pool did not roll to the new concurrency")
    args = clusters.args("demo-worker-default")
    assert args[args.index("--concurrency") + 1] == "3"
    assert clusters.get("demo")["status"]["observedGeneration"] == 2


def test_hand_edit_of_an_owned_field_is_repaired_and_others_kept(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    clusters.create("demo", sample_spec())
    clusters.wait_phase("demo", "Available")
    clusters.apps.patch_namespaced_deployment(
        "demo-worker-default",
        clusters.namespace,
        [
            {"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": "x"},
            {"op": "add", "path": "/metadata/labels/hand-made", "value": "kept"},
        ],
    )

    def repaired() -> bool:
        return clusters.args("demo-worker-default")[1] == "celery_demo"

    wait_for(repaired, timeout=30, message="the hand edit was not repaired")
    assert (
        clusters.deployments()["demo-worker-default"]["metadata"]["labels"]["hand-made"] == "kept"
    )


def test_removed_pool_and_deleted_cluster_leave_nothing(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    spec = sample_spec(replicas=1)
    spec["workers"].append({"name": "reports", "queues": ["reports"], "replicas": 1})
    clusters.create("demo", spec)
    wait_for(
        lambda: set(clusters.deployments()) == {"demo-worker-default", "demo-worker-reports"},
        timeout=60,
        message="pools not created",
    )

    clusters.patch_spec("demo", {"workers": spec["workers"][:1]})
    wait_for(
        lambda: set(clusters.deployments()) == {"demo-worker-default"},
        timeout=120,
        message="removed pool's Deployment not deleted",
    )

    clusters.delete("demo")
    wait_for(
        lambda: (
            not clusters.deployments()
            and not clusters.statefulsets()
            and not clusters.pods(f"{naming.INSTANCE_LABEL}=demo")
        ),
        timeout=120,
        message="children left after deleting the cluster",
    )


# (case, change to the sample spec, where the error must point)
SCHEMA_REJECTS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no image", lambda s: s.pop("image"), "spec.image"),
    ("empty image", lambda s: s.update(image=""), "spec.image"),
    ("app with a space", lambda s: s.update(app="my app"), "spec.app"),
    ("no broker", lambda s: s.pop("broker"), "spec.broker"),
    ("no workers", lambda s: s.update(workers=[]), "spec.workers"),
    (
        "pool name with capitals",
        lambda s: s["workers"][0].update(name="Default"),
        "spec.workers[0].name",
    ),
    (
        "negative replicas",
        lambda s: s["workers"][0].update(replicas=-1),
        "spec.workers[0].replicas",
    ),
    (
        "zero concurrency",
        lambda s: s["workers"][0].update(concurrency=0),
        "spec.workers[0].concurrency",
    ),
    ("unknown pool type", lambda s: s["workers"][0].update(pool="fork"), "spec.workers[0].pool"),
    ("empty queue list", lambda s: s["workers"][0].update(queues=[]), "spec.workers[0].queues"),
    (
        "probe timeout above its period",
        lambda s: s.update(probes={"workerLiveness": {"periodSeconds": 2, "timeoutSeconds": 3}}),
        "spec.probes.workerLiveness.timeoutSeconds",
    ),
    (
        "probe timeout above the default period",
        lambda s: s.update(probes={"workerReadiness": {"timeoutSeconds": 6}}),
        "spec.probes.workerReadiness.timeoutSeconds",
    ),
    (
        "soft limit above hard",
        lambda s: s["workers"][0].update(softTimeLimitSeconds=9, timeLimitSeconds=5),
        "spec.workers[0]",
    ),
    (
        "duplicate pool names",
        lambda s: s["workers"].append(copy.deepcopy(s["workers"][0])),
        "spec.workers[1]",
    ),
    ("bad pull policy", lambda s: s.update(imagePullPolicy="Sometimes"), "spec.imagePullPolicy"),
    (
        "priority step out of range",
        lambda s: s["broker"].update(transportOptions={"prioritySteps": [0, 300]}),
        "spec.broker.transportOptions.prioritySteps[1]",
    ),
    (
        "priority steps unsorted",
        lambda s: s["broker"].update(transportOptions={"prioritySteps": [9, 0]}),
        "prioritySteps must be sorted ascending without duplicates",
    ),
    (
        "priority step duplicated",
        lambda s: s["broker"].update(transportOptions={"prioritySteps": [0, 3, 3]}),
        "spec.broker.transportOptions.prioritySteps[2]: Duplicate value",
    ),
    (
        "replicas above the bound",
        lambda s: s["workers"][0].update(replicas=1001),
        "spec.workers[0].replicas in body should be less than or equal to 1000",
    ),
    (
        "maxReplicas above the bound",
        lambda s: s["workers"][0].update(autoscaling={"maxReplicas": 1001}),
        "spec.workers[0].autoscaling.maxReplicas in body should be less than or equal to 1000",
    ),
    (
        "unknown beat persistence",
        lambda s: s["beat"].update(persistence={"type": "hostPath"}),
        "spec.beat.persistence.type",
    ),
    (
        "zero grace period",
        lambda s: s["workers"][0].update(terminationGracePeriodSeconds=0),
        "spec.workers[0].terminationGracePeriodSeconds",
    ),
    (
        "autoscaling without maxReplicas",
        lambda s: s["workers"][0].update(autoscaling={"minReplicas": 1}),
        "spec.workers[0].autoscaling.maxReplicas",
    ),
    (
        "maxReplicas below minReplicas",
        lambda s: s["workers"][0].update(autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        "spec.workers[0].autoscaling.maxReplicas",
    ),
    (
        "fallback above maxReplicas",
        lambda s: s["workers"][0].update(
            autoscaling={"maxReplicas": 2, "brokerUnreadable": {"fallbackReplicas": 3}}
        ),
        "spec.workers[0].autoscaling.brokerUnreadable.fallbackReplicas",
    ),
    (
        "a scale-down that can never step",
        lambda s: s["workers"][0].update(
            autoscaling={"maxReplicas": 2, "scaleDown": {"maxStepPercent": 0}}
        ),
        "spec.workers[0].autoscaling.scaleDown.maxStepPods",
    ),
    (
        "zero target",
        lambda s: s["workers"][0].update(autoscaling={"maxReplicas": 2, "targetTasksPerSlot": 0}),
        "spec.workers[0].autoscaling.targetTasksPerSlot",
    ),
]

# Specs the schema accepts but that cannot work: the operator reports them as Degraded.
DEGRADED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "broker Secret missing",
        lambda s: s["broker"]["urlSecretRef"].update(name="nope"),
        "spec.broker.urlSecretRef.name",
    ),
    (
        "broker Secret key missing",
        lambda s: s["broker"]["urlSecretRef"].update(key="nope"),
        "spec.broker.urlSecretRef.key",
    ),
    (
        "names too long together",
        lambda s: s["workers"][0].update(name="p" * 30),
        "spec.workers[0].name",
    ),
]


def test_invalid_specs_are_rejected_or_degraded_and_the_operator_stays_healthy(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    liveness_port: int,
) -> None:
    for case, change, field in SCHEMA_REJECTS:
        spec = sample_spec()
        change(spec)
        with pytest.raises(client.ApiException) as raised:
            clusters.create(f"bad-{uuid.uuid4().hex[:6]}", spec)
        assert raised.value.status == 422, case
        assert field in str(raised.value.body), f"{case}: {raised.value.body}"

    for index, (case, change, field) in enumerate(DEGRADED):
        spec = sample_spec()
        change(spec)
        name = f"degraded-{index}-with-a-long-name-x"
        clusters.create(name, spec)
        clusters.wait_phase(name, "Degraded", timeout=60)
        message = clusters.condition(name, "Degraded")["message"]
        assert message.startswith(field), f"{case}: {message}"

    assert not clusters.deployments(), "a degraded cluster created children"
    assert _healthy(liveness_port)  # and the fixture checks its log for tracebacks at the end


def test_a_spec_that_breaks_later_deletes_nothing_that_runs(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    clusters.create("demo", sample_spec())
    clusters.wait_phase("demo", "Available")
    uids = {n: d["metadata"]["uid"] for n, d in clusters.deployments().items()}
    broken = sample_spec(concurrency=5)
    broken["broker"]["urlSecretRef"]["name"] = "gone"
    clusters.patch_spec("demo", broken)
    clusters.wait_phase("demo", "Degraded", timeout=60)
    assert {n: d["metadata"]["uid"] for n, d in clusters.deployments().items()} == uids
    args = clusters.args("demo-worker-default")
    assert args[args.index("--concurrency") + 1] == "2", "a degraded spec was applied"
    events = clusters.core.list_namespaced_event(
        clusters.namespace, field_selector="involvedObject.name=demo"
    ).items
    assert any(e.type == "Warning" and e.reason == "BrokerSecretMissing" for e in events)


@pytest.fixture
def operator_with_deployed_rbac(
    crd: None,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    liveness_port: int,
    tmp_path: Path,
) -> Iterator[KopfRunner]:
    """The operator logged in as the ServiceAccount of the cluster-wide install (deploy/), with
    only its ClusterRole's permissions: a verb the code needs and the role lacks shows up as a
    403 here. The CRD comes from the crd fixture; the aggregated roles are test_rbac.py's."""
    rendered = rbac.kustomize(ROOT / "deploy")
    install = [
        *rbac.pick(rendered, "Namespace", "ServiceAccount"),
        rbac.named(rendered, "ClusterRole", "celery-operator"),
        rbac.named(rendered, "ClusterRoleBinding", "celery-operator"),
    ]
    # The roles as this checkout has them, never ones left by an older run.
    rbac.kubectl_delete(kubeconfig, install[2:])
    rbac.kubectl_apply(kubeconfig, install)
    scoped = rbac.service_account_kubeconfig(
        api_client, kubeconfig, "celery-operator", "celery-operator", tmp_path / "sa.kubeconfig"
    )
    # A glob, not the name: Kopf then discovers namespaces and watches CRDs, what the
    # ClusterRole holds beyond the namespaced Role (which every other e2e test runs under).
    with run_operator_as(scoped, kubeconfig, namespace, liveness_port, f"{namespace}*") as runner:
        yield runner
    rbac.kubectl_delete(kubeconfig, install)  # leave nothing behind
    refused = rbac.refusals(runner.output)  # including 403s the code logs and carries on from
    assert not refused, "\n".join(refused)


def test_the_operator_needs_no_more_than_the_deployed_rbac(
    operator_with_deployed_rbac: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    use_every_verb(clusters, sample_spec)
