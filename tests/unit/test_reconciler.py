"""The whole reconcile against a write-counting fake of the Kube adapter, with the monitor, the
autoscaler and the shared brokers (scripted) all present: what it writes, what it shares per
broker, and what it lets go of when a cluster goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from celery_operator import naming
from celery_operator.autoscaler import Autoscaler
from celery_operator.monitor import HealthMonitor
from celery_operator.reconciler import Reconciler
from tests.unit.fakes import FakeKube, ScriptedBrokers, worker_labels
from tests.unit.samples import minimal_spec

NS = "apps"
URL = "redis://broker.example:6379/0"
PASSWORD = "s3cr/et@pa#ss?w:rd%"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Operator:
    """The reconcile as the handlers wire it, over the fakes."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        self.clock = Clock()
        self.scripted = ScriptedBrokers(clock=self.monotonic)
        self.brokers = self.scripted.registry()
        self.woken: list[tuple[str, str]] = []
        self.autoscaler = Autoscaler(
            self.kube, clock=self.clock, wake=self.woken.append, monotonic=self.monotonic
        )
        self.monitor = HealthMonitor(interval=10)
        self.reconciler = Reconciler(
            self.kube,
            self.brokers,
            clock=self.clock,
            monitor=self.monitor,
            autoscaler=self.autoscaler,
        )

    def monotonic(self) -> float:
        return self.clock.now.timestamp()

    def add(self, name: str, spec: dict[str, Any], url: str = URL) -> None:
        self.kube.add_secret(NS, f"{name}-broker", {"url": url})
        spec["broker"] = {"urlSecretRef": {"name": f"{name}-broker"}}
        self.kube.add_cluster(NS, name, spec)

    def converge(self, name: str) -> int:
        """Reconcile, poll the autoscaler, reconcile (its first decision lands in status)."""
        writes = self.reconciler.reconcile(NS, name).writes
        writes += self.reconciler.autoscale(NS, name).writes
        return writes + self.reconciler.reconcile(NS, name).writes


def _spec() -> dict[str, Any]:
    spec = minimal_spec()
    spec["workers"] = [
        {"name": "default", "replicas": 2},
        {"name": "slow", "queues": ["slow"], "autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
    ]
    spec["flower"] = {"enabled": True, "basicAuthSecretRef": {"name": "flower"}}
    return spec


def _series(cluster: str) -> int:
    return sum(
        1
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("namespace") == NS and sample.labels.get("cluster") == cluster
    )


@pytest.fixture
def op() -> Operator:
    operator = Operator()
    operator.kube.add_secret(NS, "flower", {"auth": "admin:pw"})
    return operator


def test_a_second_pass_over_an_unchanged_cluster_writes_nothing(op: Operator) -> None:
    op.add("demo", _spec())
    for i in range(2):
        op.kube.add_pod(NS, f"demo-worker-default-abc-{i}", worker_labels("demo", "default"))
    assert op.converge("demo") > 0
    assert set(op.kube.children("Deployment")) == {
        "demo-worker-default",
        "demo-worker-slow",
        "demo-flower",
    }
    assert set(op.kube.children("StatefulSet")) == {"demo-beat"}
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    assert status["phase"] == "Available"

    op.clock.advance(11)  # a hung-worker cycle is due again: it asks, and changes nothing
    assert op.converge("demo") == 0
    [shared] = op.scripted.made
    # Every census was addressed to the running pods' node names, nothing else.
    expected = [f"default@demo-worker-default-abc-{i}" for i in range(2)]
    assert shared.census_calls == [expected, expected]
    assert shared.claimed[(NS, "demo")] == set(expected)
    assert shared.subscribed == {(NS, "demo")}
    assert shared.watched == {(NS, "demo"): frozenset({"slow"})}


def test_clusters_on_one_broker_share_it_and_the_last_to_go_closes_it(op: Operator) -> None:
    for name in ("a", "b"):
        op.add(name, _spec())
        op.converge(name)
    op.add("c", _spec(), url="redis://broker.example/0")  # the same broker, written otherwise
    op.converge("c")
    assert len(op.scripted.made) == 1
    assert len(op.brokers) == 1
    assert op.brokers.users() == 3
    [shared] = op.scripted.made
    assert _series("a") > 0

    op.kube.delete_cluster(NS, "a")
    assert not op.reconciler.reconcile(NS, "a").found
    assert shared.released == [(NS, "a")]
    assert not shared.closed
    assert (NS, "a") not in shared.watched
    assert (NS, "a") not in shared.subscribed
    assert op.monitor.last((NS, "a")) is None
    assert op.autoscaler.clusters == 2
    assert _series("a") == 0  # no series of a deleted cluster is exported
    assert _series("b") > 0

    for name in ("b", "c"):
        op.kube.delete_cluster(NS, name)
        op.reconciler.reconcile(NS, name)
    assert shared.closed
    assert len(op.brokers) == 0
    assert op.autoscaler.clusters == 0


def test_a_rotated_broker_secret_moves_the_cluster_and_rolls_its_pods(op: Operator) -> None:
    op.add("demo", _spec())
    op.converge("demo")
    before = {
        name: obj["spec"]["template"]["metadata"]["annotations"][naming.SECRET_DIGEST_ANNOTATION]
        for name, obj in [
            *op.kube.children("Deployment").items(),
            *op.kube.children("StatefulSet").items(),
        ]
    }
    new_url = "redis://broker.example:6379/1"
    op.kube.add_secret(NS, "demo-broker", {"url": new_url})
    outcome = op.reconciler.reconcile(NS, "demo")
    updated = {a.name for a in outcome.actions if a.verb == "update"}
    # Every pod that reads the broker URL rolls: workers, beat, and Flower.
    assert updated == set(before)
    after = {
        name: obj["spec"]["template"]["metadata"]["annotations"][naming.SECRET_DIGEST_ANNOTATION]
        for name, obj in [
            *op.kube.children("Deployment").items(),
            *op.kube.children("StatefulSet").items(),
        ]
    }
    assert all(after[name] != before[name] for name in before)
    assert not any(new_url in digest or "broker" in digest for digest in after.values())
    old, new = op.scripted.made
    assert old.closed
    assert not new.closed
    assert op.brokers.users() == 1


def test_rotating_flowers_login_rolls_flower_only(op: Operator) -> None:
    op.add("demo", _spec())
    op.converge("demo")
    op.kube.add_secret(NS, "flower", {"auth": "admin:another"})
    outcome = op.reconciler.reconcile(NS, "demo")
    assert {a.name for a in outcome.actions} == {"demo-flower"}


def test_an_unparseable_broker_url_degrades_the_cluster_and_never_shows_the_password(
    op: Operator,
) -> None:
    op.add("demo", _spec(), url=f"redis://:{PASSWORD}@broker.example:6390/9")
    outcome = op.reconciler.reconcile(NS, "demo")
    assert outcome.phase == "Degraded"
    assert op.kube.children("Deployment") == {}  # nothing is built on a URL that cannot work
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    [degraded] = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert degraded["reason"] == "BrokerUrlInvalid"
    assert degraded["message"].startswith("spec.broker.urlSecretRef: ")
    written = repr(status) + repr(op.kube.events)
    for fragment in ("s3cr", "et@pa", "pa#ss", "ss?w", "w:rd"):
        assert fragment not in written
    assert op.scripted.made == []


def test_an_unsupported_broker_scheme_is_named_without_the_url(op: Operator) -> None:
    op.add("demo", _spec(), url="sqs://AKIA:hunter2@rabbit.example/queue")
    op.reconciler.reconcile(NS, "demo")
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    [degraded] = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert "'sqs' is not supported" in degraded["message"]
    assert "hunter2" not in repr(status)
    assert "rabbit.example" not in degraded["message"]


def test_an_idle_pool_at_zero_is_not_polled_until_its_broker_wakes_it(op: Operator) -> None:
    spec = _spec()
    spec["workers"] = [spec["workers"][1]]  # only the autoscaled pool, at zero
    spec["beat"] = {"enabled": False}
    spec["flower"] = {"enabled": False}
    op.add("demo", spec)
    op.converge("demo")
    assert op.reconciler.reconcile(NS, "demo").poll_in is None  # quiet: nothing to poll
    [shared] = op.scripted.made
    shared.waiting["slow"] = 4
    # Were the broker's wake lost, the next reconcile still sees its reading: poll at once.
    assert op.reconciler.reconcile(NS, "demo").poll_in == 0.0
    shared.wakes[(NS, "demo")]()  # what the broker's poller does when a count changes
    assert op.woken == [(NS, "demo")]
    polled = op.reconciler.autoscale(NS, "demo")
    # 4 waiting over 2 slots per worker (the default concurrency): 2 workers.
    assert op.kube.children("Deployment")["demo-worker-slow"]["spec"]["replicas"] == 2
    assert polled.poll_in is not None  # busy now: polled every interval again


def test_a_broker_that_cannot_be_read_is_reported_and_redacted(op: Operator) -> None:
    op.add("demo", _spec())
    op.converge("demo")
    [shared] = op.scripted.made
    shared.down = True
    op.reconciler.reconcile(NS, "demo")
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    [reachable] = [c for c in status["conditions"] if c["type"] == "BrokerReachable"]
    assert (reachable["status"], reachable["reason"]) == ("False", "BrokerUnreachable")
    assert "connection refused" in reachable["message"]


def test_kinds_that_cannot_exist_are_not_listed_but_leftovers_are_found(op: Operator) -> None:
    spec = _spec()
    op.add("demo", spec)
    op.converge("demo")
    spec["beat"] = {"enabled": False}
    spec["flower"] = {"enabled": False}
    op.kube.objects[("CeleryCluster", NS, "demo")]["spec"]["beat"] = spec["beat"]
    op.kube.objects[("CeleryCluster", NS, "demo")]["spec"]["flower"] = spec["flower"]
    op.kube.listed.clear()
    outcome = op.reconciler.reconcile(NS, "demo")
    # Beat and Flower were there: listed, found, and deleted.
    assert {(a.verb, a.kind) for a in outcome.actions} >= {
        ("delete", "StatefulSet"),
        ("delete", "Service"),
    }
    assert sorted(op.kube.listed) == ["Deployment", "Service", "StatefulSet"]
    op.kube.listed.clear()
    op.reconciler.reconcile(NS, "demo")
    assert op.kube.listed == ["Deployment"]  # none can exist now: nothing else is listed

    fresh = Reconciler(op.kube, op.brokers, clock=op.clock)  # an operator just restarted
    op.kube.listed.clear()
    fresh.reconcile(NS, "demo")
    assert sorted(op.kube.listed) == ["Deployment", "Service", "StatefulSet"]


def test_workers_are_asked_less_often_while_no_decision_can_depend_on_it(op: Operator) -> None:
    spec = _spec()
    spec["workers"] = [
        {"name": "slow", "queues": ["slow"], "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    ]
    spec["beat"] = {"enabled": False}
    spec["flower"] = {"enabled": False}
    op.add("demo", spec)
    for i in range(2):
        op.kube.add_pod(NS, f"demo-worker-slow-abc-{i}", worker_labels("demo", "slow"))
    op.reconciler.reconcile(NS, "demo")
    [shared] = op.scripted.made

    def run(seconds: int) -> int:
        """Poll once a second for ``seconds``; how many times the workers were asked."""
        before = len(shared.tasks_calls)
        for _ in range(seconds):
            op.reconciler.autoscale(NS, "demo")
            asking = op.autoscaler._clusters[(NS, "demo")].asking
            if asking is not None:
                asking.result(timeout=5)
            op.clock.advance(1)
        return len(shared.tasks_calls) - before

    # At its minimum with nothing waiting: every 10 s, and what they hold stays known.
    assert run(30) == 3
    pools = op.autoscaler.report((NS, "demo"))
    assert pools[0].load is not None
    assert pools[0].load.running == 0
    # Work waits: the answer matters for the decision again, every 2 s.
    shared.waiting["slow"] = 3
    assert run(10) == 5


def test_pods_that_cannot_be_created_say_why_in_status_and_an_event(op: Operator) -> None:
    op.add("demo", _spec())
    op.converge("demo")
    assert "Event" not in op.kube.listed  # beat has its pod: no Events read
    quota = 'pods "demo-worker-default-7c9f-" is forbidden: exceeded quota: no-pods'
    worker = op.kube.objects[("Deployment", NS, "demo-worker-default")]
    worker["status"] = {
        **worker["status"],
        "readyReplicas": 0,
        "availableReplicas": 0,
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": quota},
        ],
    }  # fmt: skip
    beat = op.kube.objects[("StatefulSet", NS, "demo-beat")]
    beat["status"] = {**beat["status"], "replicas": 0, "readyReplicas": 0}
    refused = "create Pod demo-beat-0 in StatefulSet demo-beat failed error: violates PodSecurity"
    involved = {"kind": "StatefulSet", "name": "demo-beat", "namespace": NS}
    op.kube.object_events += [
        {"involvedObject": involved, "reason": "FailedCreate", "message": "older",
         "lastTimestamp": "2026-12-01T11:00:00Z"},
        {"involvedObject": involved, "reason": "FailedCreate", "message": refused,
         "lastTimestamp": "2026-12-01T11:59:00Z"},
        {"involvedObject": involved, "reason": "SuccessfulDelete", "message": "unrelated"},
    ]  # fmt: skip

    op.reconciler.reconcile(NS, "demo")
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (status["phase"], degraded["status"], degraded["reason"]) == (
        "Degraded", "True", "FailedCreate"
    )  # fmt: skip
    assert degraded["message"] == (
        f"pods cannot be created: pool default: {quota}; beat: {refused}"
    )
    pool = next(p for p in status["pools"] if p["name"] == "default")
    assert pool["replicaFailure"] == {"reason": "FailedCreate", "message": quota}
    assert status["beatFailure"] == {"reason": "FailedCreate", "message": refused}
    assert any(reason == "FailedCreate" for reason, _ in op.kube.events)

    worker["status"] = _settled_like(worker)  # the quota was raised: the pods came
    beat["status"] = {**beat["status"], "replicas": 1, "readyReplicas": 1}
    listed = op.kube.listed.count("Event")
    op.reconciler.reconcile(NS, "demo")
    assert op.kube.listed.count("Event") == listed  # beat has a pod again: no Events read
    status = op.kube.objects[("CeleryCluster", NS, "demo")]["status"]
    assert status["phase"] == "Available"
    assert "beatFailure" not in status
    assert all("replicaFailure" not in p for p in status["pools"])


def _settled_like(deployment: dict[str, Any]) -> dict[str, Any]:
    replicas = deployment["spec"]["replicas"]
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }


def test_a_cluster_deleted_during_its_reconcile_is_let_go_not_retried(
    op: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted between the read and the status write (seen in e2e with 20 clusters deleted at
    once): the 404 of the status patch ends the pass like a cluster not found, and what the
    operator held for it goes."""
    op.add("demo", _spec())
    op.reconciler.reconcile(NS, "demo")
    assert op.brokers.users() == 1
    op.kube.objects[("CeleryCluster", NS, "demo")]["spec"]["workers"][0]["replicas"] = 3
    patch = op.kube.patch_cluster_status

    def deleted_meanwhile(namespace: str, name: str, status: Any) -> Any:
        del op.kube.objects[("CeleryCluster", namespace, name)]
        return patch(namespace, name, status)

    monkeypatch.setattr(op.kube, "patch_cluster_status", deleted_meanwhile)
    outcome = op.reconciler.reconcile(NS, "demo")
    assert not outcome.found
    assert op.brokers.users() == 0
    assert op.scripted.made[0].closed
