"""Fakes of the operator's own adapters, for unit tests of the whole reconcile (no I/O).

``FakeKube`` stands in for :class:`celery_operator.kube.Kube`: it keeps objects in dicts, counts
every write exactly as the real adapter does (anything but a read), and plays the two
controllers the reconcile reads back (a Deployment becomes fully rolled out and ready, a beat
StatefulSet ready on its current revision). ``ScriptedBroker`` stands in for a shared
:class:`celery_operator.brokers.Broker`: a fixed backlog, every asked node answering, and a
record of what was watched, subscribed, claimed and released.
"""

from __future__ import annotations

import base64
import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery_operator import naming
from celery_operator.brokers import Backlog, BrokerKey, Brokers, ClusterKey
from celery_operator.health import Reply
from celery_operator.kube import EventTarget, Kube, KubeError
from celery_operator.queues import QueueLoad

Obj = dict[str, Any]


class FakeKube(Kube):
    """An in-memory API server of the few kinds the reconcile touches."""

    def __init__(self) -> None:  # no API client: nothing leaves the process
        self.writes = 0
        self.objects: dict[tuple[str, str, str], Obj] = {}
        """(kind, namespace, name) -> object."""
        self.events: list[tuple[str, str]] = []
        """(reason, message) of every Event posted."""
        self.pods: dict[tuple[str, str], Obj] = {}
        self.listed: list[str] = []
        """The kind of every list_children call (and ``Event`` for list_events), in order."""
        self.object_events: list[Obj] = []
        """Events that controllers posted (tests add them), for list_events."""
        self._uids = itertools.count(1)

    # --- what tests set up -------------------------------------------------------------------

    def add_cluster(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        self.objects[("CeleryCluster", namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, "uid": "c-uid", "generation": 1},
            "spec": copy.deepcopy(dict(spec)),
        }

    def add_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.objects[("Secret", namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, "uid": f"s-{name}"},
            "data": encoded,
        }

    def add_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        self.pods[(namespace, name)] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"p-{next(self._uids)}",
                "labels": dict(labels),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }

    def delete_cluster(self, namespace: str, name: str) -> None:
        del self.objects[("CeleryCluster", namespace, name)]

    def children(self, kind: str) -> dict[str, Obj]:
        return {n: o for (k, _, n), o in self.objects.items() if k == kind}

    # --- reads -------------------------------------------------------------------------------

    def get_cluster(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.objects.get(("CeleryCluster", namespace, name)))

    def get_child(self, kind: str, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def list_children(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        self.listed.append(kind)
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.objects.items())
            if k == kind and ns == namespace and _matches(obj, labels)
        ]

    def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        return [
            copy.deepcopy(pod)
            for (ns, _), pod in sorted(self.pods.items())
            if ns == namespace and _matches(pod, labels)
        ]

    def list_events(self, namespace: str, kind: str, name: str, reason: str) -> list[Obj]:
        self.listed.append("Event")
        return [
            e
            for e in self.object_events
            if e["involvedObject"] == {"kind": kind, "name": name, "namespace": namespace}
            and e["reason"] == reason
        ]

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.objects.get(("Secret", namespace, name)))

    # --- writes ------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        self.writes += 1
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        stored = copy.deepcopy(dict(obj))
        stored["metadata"].setdefault("uid", f"u-{next(self._uids)}")
        stored["metadata"]["generation"] = (
            self.objects.get(key, {}).get("metadata", {}).get("generation", 0) + 1
        )
        stored["status"] = _settled(stored)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.writes += 1
        deployment = self.objects[("Deployment", namespace, name)]
        deployment["spec"]["replicas"] = replicas
        deployment["status"] = _settled(deployment)

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.writes += 1
        pod = self.pods.get((namespace, name))
        if pod is not None:
            pod["metadata"].setdefault("annotations", {}).update(annotations)

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes += 1
        self.pods.pop((namespace, name), None)

    def delete_child(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes += 1
        self.objects.pop((kind, namespace, name), None)

    def patch_cluster_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj | None:
        self.writes += 1
        cluster = self.objects.get(("CeleryCluster", namespace, name))
        if cluster is None:  # as the API server answers for a deleted resource
            raise KubeError(404, "NotFound", f'celeryclusters "{name}" not found')
        merged = {**cluster.get("status", {}), **copy.deepcopy(dict(status))}
        cluster["status"] = {k: v for k, v in merged.items() if v is not None}
        return copy.deepcopy(cluster)

    def emit_event(
        self, target: EventTarget, *, reason: str, message: str, warning: bool, now: datetime
    ) -> None:
        self.writes += 1
        self.events.append((reason, message))


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _settled(obj: Mapping[str, Any]) -> Obj:
    """The status a controller reports once it has caught up with ``obj``."""
    generation = obj["metadata"]["generation"]
    replicas = obj.get("spec", {}).get("replicas", 1)
    if obj["kind"] == "Deployment":
        return {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
    if obj["kind"] == "StatefulSet":
        return {
            "observedGeneration": generation,
            "replicas": 1,
            "readyReplicas": 1,
            "updatedReplicas": 1,
            "currentRevision": "r1",
            "updateRevision": "r1",
        }
    return {}


@dataclass
class ScriptedBroker:
    """A shared broker with scripted answers (see the module docstring)."""

    key: BrokerKey
    name: str = "redis://broker:6379/0"
    kind: str = "redis"
    counting: str = "queue lengths read from Redis (every priority list)"
    waiting: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, int] | None = None
    """Per queue, as RabbitMQ's management API tells; None: the broker does not (Redis)."""
    down: bool = False
    watched: dict[ClusterKey, frozenset[str]] = field(default_factory=dict)
    wakes: dict[ClusterKey, Callable[[], None]] = field(default_factory=dict)
    subscribed: set[ClusterKey] = field(default_factory=set)
    claimed: dict[ClusterKey, set[str]] = field(default_factory=dict)
    census_calls: list[list[str]] = field(default_factory=list)
    tasks_calls: list[list[str]] = field(default_factory=list)
    released: list[ClusterKey] = field(default_factory=list)
    closed: bool = False
    clock: Callable[[], float] = field(default=lambda: 0.0)

    def _check(self) -> None:
        if self.down:
            from celery_operator.broker import BrokerUnavailable  # noqa: PLC0415

            raise BrokerUnavailable("cannot read queue lengths: connection refused")

    def read_loads(self, queues: Sequence[str]) -> Mapping[str, QueueLoad]:
        self._check()
        return {
            q: QueueLoad(
                waiting=self.waiting.get(q, 0),
                in_flight=None if self.unacked is None else self.unacked.get(q, 0),
                consumers=None,
                source="scripted",
            )
            for q in queues
        }

    def read_heads(self, queues: Sequence[str]) -> Mapping[str, Sequence[str | None]]:
        self._check()
        return dict.fromkeys(queues, (None,))

    def read_beat_tick(self) -> float | None:
        self._check()
        return None

    def watch(
        self, cluster: ClusterKey, queues: Iterable[str], interval: float, wake: Callable[[], None]
    ) -> None:
        self.watched[cluster] = frozenset(queues)
        self.wakes[cluster] = wake

    def unwatch(self, cluster: ClusterKey) -> None:
        self.watched.pop(cluster, None)
        self.wakes.pop(cluster, None)

    def backlog(self) -> Backlog | None:
        if not self.watched:
            return None
        if self.down:
            return Backlog(at=self.clock(), counts=None, error="connection refused")
        queues = {q for qs in self.watched.values() for q in qs}
        in_flight = None
        if self.unacked is not None:
            in_flight = {q: self.unacked.get(q, 0) for q in queues}
        return Backlog(
            at=self.clock(),
            counts={q: self.waiting.get(q, 0) for q in queues},
            in_flight=in_flight,
        )

    def census(self, nodes: Sequence[str]) -> Mapping[str, Reply]:
        self.census_calls.append(list(nodes))
        return {node: Reply(processed=1, slots=2) for node in nodes}

    def tasks_in_hand(self, nodes: Sequence[str]) -> Mapping[str, tuple[int, int]]:
        self.tasks_calls.append(list(nodes))
        return dict.fromkeys(nodes, (0, 0))

    def subscribe_events(self, cluster: ClusterKey, pool_of_queue: Mapping[str, str]) -> None:
        self.subscribed.add(cluster)

    def claim_nodes(self, cluster: ClusterKey, nodes: Iterable[str]) -> None:
        self.claimed[cluster] = set(nodes)

    def workers_online(self, cluster: ClusterKey) -> Mapping[str, int]:
        return {}

    def release(self, cluster: ClusterKey) -> None:
        self.released.append(cluster)
        self.unwatch(cluster)
        self.subscribed.discard(cluster)
        self.claimed.pop(cluster, None)

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedBrokers:
    """A :class:`Brokers` whose factory makes ScriptedBrokers, remembered for the test."""

    clock: Callable[[], float] = field(default=lambda: 0.0)
    """The clock of the brokers' backlog readings (the autoscaler's ``monotonic``)."""
    made: list[ScriptedBroker] = field(default_factory=list)

    def factory(self, key: BrokerKey) -> ScriptedBroker:
        broker = ScriptedBroker(key, clock=self.clock)
        self.made.append(broker)
        return broker

    def registry(self) -> Brokers:
        return Brokers(self.factory)


def worker_labels(cluster: str, pool: str) -> dict[str, str]:
    return {**naming.cluster_labels(cluster), **naming.worker_selector(cluster, pool)}
