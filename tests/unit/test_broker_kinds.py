"""RabbitMQ, TLS Redis and Sentinel from the spec to the pods and the shared broker: what
``spec.broker``'s ``caSecretRef``, ``managementApi`` and ``transportOptions.masterName`` become,
the errors that name the field, and the policy's use of RabbitMQ's unacked counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_operator import builders, naming, scaling, status
from celery_operator.brokers import BrokerKey, queue_source
from celery_operator.queues import KeyScheme
from celery_operator.rabbitmq import ManagementApi, RabbitQueues
from celery_operator.reconciler import Reconciler
from celery_operator.spec import Autoscaling, SecretKeyRef, SpecError, parse_cluster
from tests.unit.fakes import FakeKube, ScriptedBrokers
from tests.unit.samples import minimal_spec

NS = "apps"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
API_URL = "http://rabbit.example:15672"
API: dict[str, Any] = {"url": API_URL, "credentialsSecretRef": {"name": "rabbit-api"}}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _spec(**broker: Any) -> dict[str, Any]:
    spec = minimal_spec()
    spec["broker"] = {"urlSecretRef": {"name": "broker"}, **broker}
    spec["beat"] = {"enabled": True}
    spec["flower"] = {"enabled": True, "basicAuthSecretRef": {"name": "flower"}}
    return spec


# --- the spec ------------------------------------------------------------------------------------


def test_the_new_broker_fields_parse_with_their_defaults() -> None:
    spec = parse_cluster(
        "demo",
        _spec(
            caSecretRef={"name": "ca"},
            managementApi=API,
            transportOptions={"masterName": "mymaster"},
        ),
    )
    broker = spec.broker
    assert broker.ca == SecretKeyRef("ca", "ca.crt")
    assert broker.management is not None
    assert (broker.management.url, broker.management.secret_name) == (API_URL, "rabbit-api")
    assert (broker.management.username_key, broker.management.password_key) == (
        "username",
        "password",
    )
    assert broker.master_name == "mymaster"
    plain = parse_cluster("demo", _spec()).broker
    assert (plain.ca, plain.management, plain.master_name) == (None, None, "")


@pytest.mark.parametrize(
    "url",
    ["http://guest:hunter2@rabbit:15672", "rabbit:15672", "http://rabbit:15672/?x=hunter2"],
)
def test_a_management_url_with_a_login_or_no_scheme_is_refused_without_quoting_it(
    url: str,
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_cluster("demo", _spec(managementApi={**API, "url": url}))
    assert raised.value.path == "spec.broker.managementApi.url"
    assert "hunter2" not in str(raised.value)
    assert "credentialsSecretRef" in str(raised.value)


def test_a_management_api_needs_its_credentials() -> None:
    with pytest.raises(SpecError, match=r"credentialsSecretRef"):
        parse_cluster("demo", _spec(managementApi={"url": API_URL}))


# --- the pods ------------------------------------------------------------------------------------


def _children(spec: dict[str, Any]) -> list[dict[str, Any]]:
    owner = builders.Owner("celeryoperator.dev/v1alpha1", "CeleryCluster", "demo", NS, "uid-1")
    return builders.desired_children(owner, parse_cluster("demo", spec), {}, {})


def _containers(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for child in children
        if child["kind"] in ("Deployment", "StatefulSet")
        for c in child["spec"]["template"]["spec"]["containers"]
    ]


def test_every_pod_gets_the_ca_bundle_at_one_path_whatever_its_key() -> None:
    children = _children(_spec(caSecretRef={"name": "ca", "key": "bundle.pem"}))
    pods = [c for c in children if c["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 3  # the worker pool, beat, Flower
    for child in pods:
        volumes = child["spec"]["template"]["spec"]["volumes"]
        assert {
            "name": "broker-ca",
            "secret": {"secretName": "ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]},
        } in volumes
    for container in _containers(children):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CELERY_BROKER_CA_FILE"] == "/etc/celery-operator/broker-ca/ca.crt"
        assert {
            "name": "broker-ca",
            "mountPath": "/etc/celery-operator/broker-ca",
            "readOnly": True,
        } in container["volumeMounts"]


def test_without_a_ca_no_pod_mounts_one() -> None:
    for container in _containers(_children(_spec())):
        assert "CELERY_BROKER_CA_FILE" not in {e["name"] for e in container["env"]}
        assert all(m["name"] != "broker-ca" for m in container.get("volumeMounts", []))


def test_the_master_name_reaches_the_apps_transport_options() -> None:
    for container in _containers(_children(_spec(transportOptions={"masterName": "mymaster"}))):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert json.loads(env["CELERY_BROKER_TRANSPORT_OPTIONS"])["master_name"] == "mymaster"
    for container in _containers(_children(_spec())):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "master_name" not in json.loads(env["CELERY_BROKER_TRANSPORT_OPTIONS"])


# --- the reconcile -------------------------------------------------------------------------------


class Operator:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.scripted = ScriptedBrokers()
        self.reconciler = Reconciler(self.kube, self.scripted.registry(), clock=lambda: NOW)
        self.kube.add_secret(NS, "flower", {"auth": "admin:pw"})

    def run(self, url: str, **broker: Any) -> dict[str, Any]:
        self.kube.add_secret(NS, "broker", {"url": url})
        self.kube.add_cluster(NS, "demo", _spec(**broker))
        self.reconciler.reconcile(NS, "demo")
        found: dict[str, Any] = self.kube.objects[("CeleryCluster", NS, "demo")]["status"]
        return found

    def degraded(self, found: dict[str, Any]) -> str:
        [condition] = [c for c in found["conditions"] if c["type"] == "Degraded"]
        assert condition["status"] == "True"
        message: str = condition["message"]
        return message


@pytest.fixture
def op() -> Operator:
    return Operator()


def test_a_rabbitmq_cluster_shares_a_broker_keyed_by_its_management_api(op: Operator) -> None:
    op.kube.add_secret(NS, "rabbit-api", {"username": "monitor", "password": "hunter2"})
    op.kube.add_secret(NS, "ca", {"ca.crt": CA})
    found = op.run(
        "amqps://celery:s3cret@rabbit.example:5671/jobs",
        managementApi=API,
        caSecretRef={"name": "ca"},
    )
    [made] = op.scripted.made
    assert made.key.amqp
    assert made.key.management == ManagementApi(API_URL, "monitor", "hunter2")
    assert made.key.ca_data is not None
    assert made.key.ca_data.strip() == CA.strip()
    assert made.key.identity.virtual_host == "jobs"
    assert "hunter2" not in repr(made.key)
    assert "s3cret" not in repr(made.key)
    assert found["broker"] == "redis"  # what the scripted broker says it is
    assert ("Deployment", NS, naming.worker_name("demo", "default")) in op.kube.objects


def test_a_sentinel_url_without_a_master_name_names_the_field(op: Operator) -> None:
    found = op.run("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379")
    message = op.degraded(found)
    assert message.startswith("spec.broker.transportOptions.masterName: is required")
    assert op.scripted.made == []
    ok = Operator()
    ok.run("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379", transportOptions={"masterName": "m"})
    assert ok.scripted.made[0].key.master_name == "m"


def test_a_management_api_on_a_redis_broker_names_the_field(op: Operator) -> None:
    op.kube.add_secret(NS, "rabbit-api", {"username": "u", "password": "p"})
    message = op.degraded(op.run("redis://r:6379/0", managementApi=API))
    assert message.startswith("spec.broker.managementApi: is for RabbitMQ")


@pytest.mark.parametrize(
    ("secrets", "field"),
    [
        ({}, "spec.broker.caSecretRef.name: Secret 'ca' not found"),
        ({"ca": {"other": CA}}, "spec.broker.caSecretRef.key: Secret 'ca' has no key 'ca.crt'"),
        ({"ca": {"ca.crt": "not a certificate"}}, "spec.broker.caSecretRef.key: "),
    ],
)
def test_a_missing_or_wrong_ca_secret_names_the_field(
    op: Operator, secrets: dict[str, dict[str, str]], field: str
) -> None:
    for name, data in secrets.items():
        op.kube.add_secret(NS, name, data)
    message = op.degraded(op.run("rediss://r:6380/0", caSecretRef={"name": "ca"}))
    assert field in message
    assert op.scripted.made == []
    assert not [k for k in op.kube.objects if k[0] == "Deployment"]


def test_a_management_secret_without_the_password_key_names_that_key(op: Operator) -> None:
    op.kube.add_secret(NS, "rabbit-api", {"username": "u"})
    message = op.degraded(op.run("amqp://u:p@rabbit:5672//", managementApi=API))
    assert (
        "spec.broker.managementApi.credentialsSecretRef.passwordKey: Secret 'rabbit-api' has no "
        "key 'password'" in message
    )


def test_a_changed_ca_rolls_the_pods(op: Operator) -> None:
    op.kube.add_secret(NS, "ca", {"ca.crt": CA})
    op.run("rediss://r:6380/0", caSecretRef={"name": "ca"})
    name = naming.worker_name("demo", "default")
    before = op.kube.objects[("Deployment", NS, name)]["spec"]["template"]["metadata"]
    op.kube.add_secret(NS, "ca", {"ca.crt": CA.replace("MIIB", "MIIC")})
    op.reconciler.reconcile(NS, "demo")
    after = op.kube.objects[("Deployment", NS, name)]["spec"]["template"]["metadata"]
    key = naming.SECRET_DIGEST_ANNOTATION
    assert before["annotations"][key] != after["annotations"][key]


# --- the shared broker's reader, by kind ---------------------------------------------------------


def test_each_kind_of_url_gets_its_reader_without_connecting() -> None:
    amqp = queue_source(
        BrokerKey.of("amqp://u:p@rabbit:5672/jobs", KeyScheme()), timeout=1.0, connections=1
    )
    assert isinstance(amqp, RabbitQueues)
    assert (amqp.kind, amqp.vhost, amqp.management) == ("rabbitmq", "jobs", None)
    assert "unknown without spec.broker.managementApi" in amqp.counting
    sentinel = queue_source(
        BrokerKey.of("sentinel://s1:26379;sentinel://s2:26379", KeyScheme(), master_name="m"),
        timeout=1.0,
        connections=1,
    )
    assert sentinel.kind == "redis-sentinel"
    sentinel.close()
    tls = queue_source(BrokerKey.of("rediss://r:6380/0", KeyScheme()), timeout=1.0, connections=1)
    assert tls.kind == "redis"
    tls.close()


def test_the_status_says_the_kind_and_how_the_queues_were_counted() -> None:
    seen = status.Observation(
        generation=1,
        queue_backlog={"celery": 6},
        queue_unacked={"celery": 4},
        broker_kind="rabbitmq",
        broker_counting="ready and unacknowledged messages read from the management API x",
    )
    update = status.compute(seen, {}, NOW)
    assert update.status["broker"] == "rabbitmq"
    assert (update.status["backlog"], update.status["unacked"]) == (6, 4)
    [reachable] = [c for c in update.status["conditions"] if c["type"] == "BrokerReachable"]
    assert reachable["message"].startswith("ready and unacknowledged messages")


# --- the policy ----------------------------------------------------------------------------------

POLICY = Autoscaling(enabled=True, min_replicas=0, max_replicas=10)


def _decide(load: scaling.Load, current: int) -> scaling.Decision:
    return scaling.decide(load, current, 1, POLICY, scaling.History(), NOW)


def test_unacked_messages_keep_a_pool_from_idling_to_zero() -> None:
    """RabbitMQ says 3 messages are delivered and unacked while the workers answered nothing
    running (prefetched tasks, or late-acked ones on a worker that does not answer): busy."""
    held = _decide(scaling.Load(backlog=0, running=0, unacked=3), current=3)
    assert held.recommended == 3
    assert "(3 unacked)" in held.message
    idle = _decide(scaling.Load(backlog=0, running=0, unacked=0), current=3)
    assert idle.recommended == 0


def test_unacked_counts_as_work_in_flight_at_least_as_much_as_running() -> None:
    assert _decide(scaling.Load(backlog=2, running=1, unacked=5), current=1).recommended == 7
    assert _decide(scaling.Load(backlog=2, running=4, unacked=1), current=1).recommended == 6
    assert _decide(scaling.Load(backlog=2, running=4), current=1).recommended == 6


def test_flower_reads_rabbitmqs_queues_through_the_same_api_without_the_login_in_the_spec() -> None:
    children = _children(_spec(managementApi=API))
    [flower] = [
        c
        for c in children
        if c["kind"] == "Deployment" and c["metadata"]["name"] == naming.flower_name("demo")
    ]
    [container] = flower["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CELERY_OPERATOR_BROKER_API_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "rabbit-api", "key": "password"}
    }
    assert env["FLOWER_BROKER_API"]["value"] == (
        "http://$(CELERY_OPERATOR_BROKER_API_USER):$(CELERY_OPERATOR_BROKER_API_PASSWORD)"
        "@rabbit.example:15672/api/"
    )
    names = [e["name"] for e in container["env"]]
    assert names.index("CELERY_OPERATOR_BROKER_API_PASSWORD") < names.index("FLOWER_BROKER_API")
    assert "FLOWER_BROKER_API" not in {
        e["name"] for e in _containers(_children(_spec()))[-1]["env"]
    }
