"""Operator settings: each field says its unit, default and why; flags and env set them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

ENV_PREFIX: Final = "CELERY_OPERATOR_"
_NAMESPACE_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means every namespace (cluster-wide). Env: NAMESPACES,
    comma-separated."""

    @property
    def exact_namespaces(self) -> bool:
        """Watching only namespaces named outright (no glob, no negation): nothing needs to be
        discovered, so a namespaced install needs no permission outside its namespaces."""
        return bool(self.namespaces) and all(_NAMESPACE_NAME.match(n) for n in self.namespaces)

    reconcile_interval_seconds: float = 15.0
    """Seconds between two reconciles of an unchanged cluster. Changes to the CeleryCluster or
    its children wake the reconcile at once; the interval repairs what no event reports and
    refreshes the broker backlog in status. Env: RECONCILE_INTERVAL_SECONDS."""

    event_debounce_seconds: float = 0.2
    """Seconds to wait after a wake-up so that a burst of watch events (a rollout touches a
    Deployment many times) costs one reconcile. Env: EVENT_DEBOUNCE_SECONDS."""

    api_timeout_seconds: float = 10.0
    """Timeout of one Kubernetes API request. Env: API_TIMEOUT_SECONDS."""

    broker_timeout_seconds: float = 2.0
    """Connect and read timeout for the broker when reading queue lengths: a broker that does
    not answer within it is reported unreachable, and reconciling goes on. Env:
    BROKER_TIMEOUT_SECONDS."""

    health_interval_seconds: float = 10.0
    """Seconds between two hung-worker cycles of a cluster (one ping, stats and active broadcast
    each); a cycle runs with the reconcile that comes due after it. Env: HEALTH_INTERVAL_SECONDS."""

    census_timeout_seconds: float = 2.0
    """How long a cycle waits for the workers' replies to each broadcast. A worker that answers
    later counts as silent this cycle. Env: CENSUS_TIMEOUT_SECONDS."""

    metrics_port: int = 9090
    """Port of the Prometheus ``/metrics`` endpoint; 0 turns it off. Env: METRICS_PORT."""

    liveness_port: int = 8080
    """Port of the operator's own liveness endpoint (``/healthz``); 0 turns it off. Env:
    LIVENESS_PORT."""

    leader_elect: bool = False
    """Run as one of several replicas: hold the Lease ``lease_namespace``/``lease_name`` before
    starting Kopf, stand by (serving only ``/healthz`` and ``/metrics``, writing nothing) while
    another process holds it. Off by default, for one operator run by hand or by the tests.
    Env: LEADER_ELECT=1."""

    lease_name: str = "celery-operator"
    """Name of the leader-election Lease (deploy/operator/leader-election.yaml grants get and
    update on this name only). Env: LEASE_NAME."""

    lease_namespace: str = ""
    """Namespace of the Lease: the operator's own. Default: ``$POD_NAMESPACE`` (the downward
    API). Env: LEASE_NAMESPACE."""

    lease_duration_seconds: float = 10.0
    """How long the standby waits, from when it last saw the Lease renewed, before it takes over
    from a leader that stopped renewing (killed, or cut off). Shorter means a faster takeover and
    more renewals; 10 s plus a 2 s retry period keeps a takeover after a SIGKILL within 15 s.
    Env: LEASE_DURATION_SECONDS."""

    renew_deadline_seconds: float = 7.0
    """How long the leader keeps reconciling while its renewals fail; then it exits (the kubelet
    restarts it as a standby). Shorter than the lease duration, so that it has stopped before
    anyone may take over: 3 s to spare. Env: RENEW_DEADLINE_SECONDS."""

    retry_period_seconds: float = 2.0
    """Seconds between two renewals by the leader and two attempts by a standby; also how soon a
    standby takes a Lease released by a leader that stops gracefully. Env: RETRY_PERIOD_SECONDS."""

    log_format: str = "text"
    """``text`` or ``json`` (one object per line, for log pipelines). Env: LOG_FORMAT."""

    verbose: bool = False
    """Debug logging. Env: VERBOSE=1."""

    watch_server_timeout_seconds: int = 300
    """Ask the API server to end each watch after this long, so a silently stalled watch is
    renewed (a known Kopf issue on some clusters)."""


def from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``CELERY_OPERATOR_*`` variables, defaults where unset."""
    values: dict[str, object] = {}
    for item in fields(Settings):
        raw = environ.get(ENV_PREFIX + item.name.upper())
        if raw is None:
            continue
        if item.name == "namespaces":
            values[item.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
        elif item.type == "float":
            values[item.name] = float(raw)
        elif item.type == "int":
            values[item.name] = int(raw)
        elif item.type == "bool":
            values[item.name] = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            values[item.name] = raw
    if "lease_namespace" not in values and environ.get("POD_NAMESPACE"):
        values["lease_namespace"] = environ["POD_NAMESPACE"]
    if values.get("log_format", "text") not in ("text", "json"):
        raise ValueError(f"{ENV_PREFIX}LOG_FORMAT must be text or json")
    return Settings(**values)  # type: ignore[arg-type]
