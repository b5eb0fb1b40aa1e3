"""Kopf wiring: thin handlers that feed the per-cluster reconcile loops (the composition root).

Only watch-event handlers are used: Kopf then stores nothing on the resources (no progress
annotations, no finalizers), so deleting a CeleryCluster never waits for the operator, and the
garbage collector removes its children through their owner references.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import prometheus_client
import redis
from celery import Celery

from celery_operator import GROUP, PLURAL, VERSION, broker, health, naming, remote
from celery_operator.autoscaler import Autoscaler, TaskCensus
from celery_operator.eventstream import EventStreams
from celery_operator.kube import Kube, load_api_client
from celery_operator.loops import ClusterLoops
from celery_operator.monitor import Census, HealthMonitor
from celery_operator.queues import KeyScheme
from celery_operator.reconciler import Reconciler, utcnow
from celery_operator.settings import Settings, from_env

log = logging.getLogger(__name__)

CHILD_LABELS = {naming.MANAGED_BY_LABEL: naming.MANAGER}


class BrokerReader:
    """Reads queues with one Redis client per broker URL, kept between reconciles."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[str, redis.Redis[bytes]] = {}

    def backlog(self, url: str, queues: Sequence[str], scheme: KeyScheme) -> Mapping[str, int]:
        return broker.read_backlog(self._client(url), queues, scheme)

    def heads(
        self, url: str, queues: Sequence[str], scheme: KeyScheme
    ) -> Mapping[str, Sequence[str | None]]:
        return broker.read_heads(self._client(url), queues, scheme)

    def beat_tick(self, url: str, scheme: KeyScheme) -> float | None:
        return broker.read_beat_tick(self._client(url), scheme)

    def _client(self, url: str) -> redis.Redis[bytes]:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = broker.connect(url, timeout=self.timeout)
        return client


def census(timeout: float) -> Census:
    """Asks a cluster's workers with one control app per broker (and key scheme), kept between
    cycles so that its connection pool is reused."""
    apps: dict[tuple[str, KeyScheme], Celery] = {}

    def ask(url: str, keys: KeyScheme, expected: int) -> dict[str, health.Reply]:
        app = apps.get((url, keys))
        if app is None:
            app = apps[(url, keys)] = remote.control_app(url, keys, timeout=timeout)
        return remote.census(app, expected=expected, timeout=timeout)

    return ask


def tasks_census(timeout: float) -> TaskCensus:
    """Asks workers what they hold, with control apps of its own (it runs in its own thread)."""
    apps: dict[tuple[str, KeyScheme], Celery] = {}

    def ask(url: str, keys: KeyScheme, nodes: Sequence[str]) -> dict[str, tuple[int, int]]:
        app = apps.get((url, keys))
        if app is None:
            app = apps[(url, keys)] = remote.control_app(url, keys, timeout=timeout)
        return remote.tasks_in_hand(app, nodes, timeout=timeout)

    return ask


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.get("settings") or from_env()
    settings.posting.enabled = False  # Events are posted by the reconcile, on transitions only
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_server_timeout_seconds + 30
    kube = Kube(load_api_client(), timeout=config.api_timeout_seconds)
    monitor = HealthMonitor(
        census(config.census_timeout_seconds), interval=config.health_interval_seconds
    )
    # The autoscaler has a reader of its own: it polls from its own thread, every second.
    autoscaler = Autoscaler(
        kube,
        BrokerReader(config.broker_timeout_seconds).backlog,
        tasks_census(config.census_timeout_seconds),
        clock=utcnow,
    )
    events = EventStreams()
    reader = BrokerReader(config.broker_timeout_seconds)
    reconciler = Reconciler(
        kube,
        reader.backlog,
        monitor=monitor,
        autoscaler=autoscaler,
        events=events,
        read_heads=reader.heads,
        read_beat_tick=reader.beat_tick,
    )
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    memo["kube"] = kube
    memo["events"] = events
    memo["loops"] = ClusterLoops(
        reconciler.reconcile,
        interval=config.reconcile_interval_seconds,
        debounce=config.event_debounce_seconds,
        poll=reconciler.autoscale,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    loops: ClusterLoops = memo["loops"]
    await loops.stop()
    events: EventStreams = memo["events"]
    await asyncio.to_thread(events.stop)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def cluster_changed(type: str, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    assert namespace is not None  # CeleryCluster is namespaced
    loops: ClusterLoops = memo["loops"]
    if type == "DELETED":
        loops.forget((namespace, name))
    else:
        loops.poke((namespace, name), create=True)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_LABELS)
async def child_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    """A child changed (a rollout progressed, or someone edited it): reconcile its cluster."""
    cluster = labels.get(naming.INSTANCE_LABEL)
    if cluster and namespace:
        loops: ClusterLoops = memo["loops"]
        loops.poke((namespace, cluster), create=False)


@kopf.on.probe(id="reconciles")
def reconcile_stats(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    loops: ClusterLoops = memo["loops"]
    return {
        "reconciles": loops.stats.reconciles,
        "failures": loops.stats.failures,
        "writes": loops.stats.writes,
        "polls": loops.stats.polls,
    }
