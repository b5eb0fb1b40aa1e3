"""Kopf wiring: thin handlers that feed the per-cluster reconcile loops (the composition root).

Only watch-event handlers are used: Kopf then stores nothing on the resources (no progress
annotations, no finalizers), so deleting a CeleryCluster never waits for the operator, and the
garbage collector removes its children through their owner references.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import prometheus_client

from celery_operator import GROUP, PLURAL, VERSION, brokerurl, naming
from celery_operator.autoscaler import Autoscaler
from celery_operator.brokers import Broker, BrokerKey, Brokers
from celery_operator.kube import Kube, load_api_client
from celery_operator.loops import ClusterLoops
from celery_operator.monitor import HealthMonitor
from celery_operator.reconciler import Reconciler, utcnow
from celery_operator.settings import Settings, from_env

log = logging.getLogger(__name__)

CHILD_LABELS = {naming.MANAGED_BY_LABEL: naming.MANAGER}


class RedactingFilter(logging.Filter):
    """The last line of defence for secrets in logs: every line and traceback passes through
    :func:`brokerurl.redact`, so no URL leaves with its user information or query, whatever
    library wrote the text. (Broker errors are redacted where they are caught, too.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = brokerurl.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = brokerurl.redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Put the filter on every handler of the root logger (where Kopf's and ours end up)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.get("settings") or from_env()
    redact_logs()
    settings.posting.enabled = False  # Events are posted by the reconcile, on transitions only
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_server_timeout_seconds + 30
    if config.exact_namespaces:
        # Kopf would list namespaces and watch CRDs to discover what to serve; a namespaced
        # install may do neither, and Kopf retries each refusal for about a minute before it
        # serves anything. Named namespaces and the CRD's one discovery at start need neither.
        settings.scanning.disabled = True
    kube = Kube(load_api_client(), timeout=config.api_timeout_seconds)

    def shared_broker(key: BrokerKey) -> Broker:
        return Broker(
            key,
            timeout=config.broker_timeout_seconds,
            census_timeout=config.census_timeout_seconds,
        )

    brokers = Brokers(shared_broker)
    autoscaler = Autoscaler(kube, clock=utcnow, wake=lambda key: loops.nudge(key))  # noqa: PLW0108 (loops comes next)
    reconciler = Reconciler(
        kube,
        brokers,
        monitor=HealthMonitor(interval=config.health_interval_seconds),
        autoscaler=autoscaler,
    )
    loops = ClusterLoops(
        reconciler.reconcile,
        interval=config.reconcile_interval_seconds,
        debounce=config.event_debounce_seconds,
        poll=reconciler.autoscale,
    )
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    memo["kube"] = kube
    memo["brokers"] = brokers
    memo["loops"] = loops


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    loops: ClusterLoops = memo["loops"]
    await loops.stop()
    brokers: Brokers = memo["brokers"]
    await asyncio.to_thread(brokers.close)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def cluster_changed(type: str, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    assert namespace is not None  # CeleryCluster is namespaced
    loops: ClusterLoops = memo["loops"]
    # Deleted: wake its loop, whose reconcile finds it gone and releases what it held.
    loops.poke((namespace, name), create=type != "DELETED")


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
        "brokers": len(memo["brokers"]),
    }
