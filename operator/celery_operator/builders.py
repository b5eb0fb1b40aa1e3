"""Desired children of a CeleryCluster as plain dicts (pure: the same spec gives the same dicts).

Each builder returns the whole object the operator owns, ready for server-side apply. Fields the
operator leaves out stay with whoever set them (a hand-added label, an HPA's replicas later on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from celery_operator import naming
from celery_operator.spec import (
    Beat,
    ClusterSpec,
    Json,
    Placement,
    PodOverrides,
    Probes,
    ProbeTiming,
    WorkerPool,
)

STATE_DIR_ENV: Final = "CELERY_PROBE_DIR"
"""Where ``celery-probe`` keeps its state (``celery_probes.state.STATE_DIR_ENV``)."""
BEAT_SCHEDULE_DIR: Final = "/var/lib/celery-beat"
BEAT_SCHEDULE_VOLUME: Final = "beat-schedule"

BROKER_CA_DIR: Final = "/etc/celery-operator/broker-ca"
BROKER_CA_FILE_NAME: Final = "ca.crt"
BROKER_CA_FILE: Final = f"{BROKER_CA_DIR}/{BROKER_CA_FILE_NAME}"
"""Where every container finds ``spec.broker.caSecretRef``'s bundle, whatever its key."""
BROKER_CA_ENV: Final = "CELERY_BROKER_CA_FILE"
"""Its path, for the probes (``celery_probes.brokercheck.CA_FILE_ENV``) and the app."""
BROKER_CA_VOLUME: Final = "broker-ca"

FLOWER_API_USER_ENV: Final = "CELERY_OPERATOR_BROKER_API_USER"
FLOWER_API_PASSWORD_ENV: Final = "CELERY_OPERATOR_BROKER_API_PASSWORD"

PROBE_COMMAND: Final = "celery-probe"
"""From the ``celery-probes`` package (``probes/``): images need it unless probes are off."""
PROBE_STATE_DIR: Final = "/run/celery-probe"
PROBE_STATE_VOLUME: Final = "celery-probe"
STARTUP_PERIOD_SECONDS: Final = 2
STARTUP_BROKER_TIMEOUT: Final = "1"
"""A startup check's broker attempt: its timeout is at most ``STARTUP_PERIOD_SECONDS``."""
HEARTBEAT_LIMIT_SECONDS: Final = 5
"""``celery-probe worker-live``'s default ``--max-age`` (``celery_probes.state``)."""
LIVENESS_KILL_GRACE_SECONDS: Final = 10
"""The grace a container gets when its liveness probe fails, instead of the pod's (60 s for
workers). A stopped or blocked main process never runs its SIGTERM handler, so waiting longer
only delays the restart (with acks_late, the tasks it held go back to the queue)."""
BEAT_MAX_INTERVAL_SECONDS: Final = 10
"""Beat wakes at least this often, so a stalled beat is caught within this plus the probe's grace,
not after the scheduler's own 300 s maximum sleep. A tick that finds nothing due costs little."""

IMAGE_USER: Final = 10001
"""The worker image's non-root user and group (images/worker): what pods run as by default."""
RESTRICTED_POD_SECURITY: Final[Mapping[str, Json]] = {
    "runAsNonRoot": True,
    "runAsUser": IMAGE_USER,
    "runAsGroup": IMAGE_USER,
    # Volumes a pod writes (beat's schedule on a claim) become writable by that group.
    "fsGroup": IMAGE_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The pod securityContext when the spec gives none: with ``RESTRICTED_CONTAINER_SECURITY``, it
meets the ``restricted`` Pod Security Standard. A spec's own securityContext replaces it whole."""
RESTRICTED_CONTAINER_SECURITY: Final[Mapping[str, Json]] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
"""The container securityContext when the spec gives none (replaced whole by the spec's)."""


@dataclass(frozen=True)
class Owner:
    """The CeleryCluster that owns the children: deleting it deletes them (garbage collector)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def desired_children(
    owner: Owner,
    spec: ClusterSpec,
    replicas: Mapping[str, int] | None = None,
    secret_digests: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every object the cluster should have: a Deployment per pool, and beat when enabled.

    ``replicas`` overrides the spec's count per pool name: the autoscaler's, for the pools it
    scales. ``secret_digests`` (by component: ``worker`` for workers and beat, ``flower``) go
    on the pod templates, so that a rotated Secret value rolls the pods that read it.
    """
    chosen = replicas or {}
    digests = secret_digests or {}
    worker_digest = digests.get(naming.WORKER)
    children = [
        worker_deployment(owner, spec, pool, chosen.get(pool.name), worker_digest)
        for pool in spec.workers
    ]
    if spec.beat.enabled:
        children.append(beat_statefulset(owner, spec, worker_digest))
    if spec.flower.enabled:
        children += [
            flower_deployment(owner, spec, digests.get(naming.FLOWER)),
            flower_service(owner, spec),
        ]
    return children


def worker_deployment(
    owner: Owner,
    spec: ClusterSpec,
    pool: WorkerPool,
    replicas: int | None = None,
    secret_digest: str | None = None,
) -> dict[str, Any]:
    """The Deployment running ``celery worker`` for ``pool``, with ``replicas`` (else the
    spec's).

    Rolling updates start new workers before old ones go (``maxUnavailable: 0``); an old worker
    receives SIGTERM, which Celery takes as a warm shutdown: it stops consuming and finishes its
    running tasks within ``terminationGracePeriodSeconds``.
    """
    selector = naming.worker_selector(owner.name, pool.name)
    pod = pool.placement.pod.layered_over(spec.pod)
    args = ["-A", spec.app, "worker", "--hostname", naming.node_name(pool.name)]
    args += ["--queues", ",".join(pool.queues)]
    args += ["--concurrency", str(pool.concurrency), "--pool", pool.pool, "--loglevel", "INFO"]
    args += ["--task-events"]  # task-* events: the operator's task metrics (eventstream.py)
    args += _flag("--prefetch-multiplier", pool.prefetch_multiplier)
    args += _flag("--max-tasks-per-child", pool.max_tasks_per_child)
    args += _flag("--max-memory-per-child", pool.max_memory_per_child_kib)
    args += _flag("--soft-time-limit", pool.soft_time_limit_seconds)
    args += _flag("--time-limit", pool.time_limit_seconds)
    args += pool.placement.extra_args
    container = _container(
        naming.WORKER, spec, pool.placement, pod, args, extra_env=[_env("CELERY_POOL", pool.name)]
    )
    probes = spec.probes
    if probes.enabled:
        live = [PROBE_COMMAND, "worker-live", "--broker-grace", str(probes.broker_grace_seconds)]
        live += ["--broker-timeout", _broker_timeout(probes.worker_liveness)]
        ready = [PROBE_COMMAND, "worker-ready", "--queues", ",".join(pool.queues)]
        _add_probes(
            container,
            probes,
            startup=[PROBE_COMMAND, "worker-live", "--broker-timeout", STARTUP_BROKER_TIMEOUT],
            liveness=(live, probes.worker_liveness),
            readiness=(ready, probes.worker_readiness),
        )
    template = _pod_template(
        spec,
        pool.placement,
        pod,
        labels={**naming.cluster_labels(owner.name), **selector},
        container=container,
        grace=pool.termination_grace_period_seconds,
        extra_volumes=_probe_volumes(probes),
        secret_digest=secret_digest,
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, naming.worker_name(owner.name, pool.name), selector),
        "spec": {
            "replicas": pool.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": template,
        },
    }
    return _stamped(deployment)


def beat_statefulset(
    owner: Owner, spec: ClusterSpec, secret_digest: str | None = None
) -> dict[str, Any]:
    """The StatefulSet running the one ``celery beat``.

    Two beats would send every scheduled task twice, so beat must run at most once, always.
    A StatefulSet with one replica gives that: its pod has a fixed name (``<name>-0``), and the
    controller creates a replacement only after the old pod object is gone. A rollout deletes the
    old pod and waits for it to terminate; an unreachable node's pod is not replaced until it is
    confirmed dead. A Deployment, even with ``Recreate``, creates a new pod as soon as the old
    one is marked for deletion, so for a while two may run; that is why it is not used here.
    """
    beat = spec.beat
    selector = naming.beat_selector(owner.name)
    pod = beat.placement.pod.layered_over(spec.pod)
    args = ["-A", spec.app, "beat", "--loglevel", "INFO"]
    args += ["--schedule", f"{BEAT_SCHEDULE_DIR}/celerybeat-schedule"]
    # No pidfile: a stale one left on a persistent volume would stop the next beat from starting.
    args += ["--pidfile="]
    args += _flag("--scheduler", beat.scheduler or None)
    probes = spec.probes
    if probes.enabled and probes.beat_liveness.enabled:
        args += ["--max-interval", str(BEAT_MAX_INTERVAL_SECONDS)]
    args += beat.placement.extra_args
    mount = {"name": BEAT_SCHEDULE_VOLUME, "mountPath": BEAT_SCHEDULE_DIR}
    container = _container(naming.BEAT, spec, beat.placement, pod, args, extra_mounts=[mount])
    if probes.enabled:
        check = [PROBE_COMMAND, "beat-live"]
        live = [*check, "--broker-timeout", _broker_timeout(probes.beat_liveness)]
        startup = [*check, "--broker-timeout", STARTUP_BROKER_TIMEOUT]
        _add_probes(container, probes, startup=startup, liveness=(live, probes.beat_liveness))
    template = _pod_template(
        spec,
        beat.placement,
        pod,
        labels={**naming.cluster_labels(owner.name), **selector},
        container=container,
        grace=beat.termination_grace_period_seconds,
        extra_volumes=[*_beat_volumes(beat), *_probe_volumes(probes)],
        secret_digest=secret_digest,
    )
    statefulset: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(owner, naming.beat_name(owner.name), selector),
        "spec": {
            "replicas": 1,
            "serviceName": naming.beat_name(owner.name),
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": template,
            "volumeClaimTemplates": _beat_claims(beat),
        },
    }
    return _stamped(statefulset)


def flower_deployment(
    owner: Owner, spec: ClusterSpec, secret_digest: str | None = None
) -> dict[str, Any]:
    """Flower, the Celery web UI, behind the basic-auth login of the user's Secret.

    The credentials reach Flower as ``FLOWER_BASIC_AUTH`` (Flower reads ``FLOWER_*`` options
    from its environment), never in its command line. ``Recreate``: under host networking two
    Flowers cannot listen on the same node and port during a rollout.
    """
    flower = spec.flower
    selector = naming.flower_selector(owner.name)
    placement = Placement(resources=flower.resources)
    auth = {
        "name": "FLOWER_BASIC_AUTH",
        "valueFrom": {"secretKeyRef": {"name": flower.secret_name, "key": flower.secret_key}},
    }
    args = ["-A", spec.app, "flower", f"--port={flower.port}"]
    container = _container(
        naming.FLOWER, spec, placement, spec.pod, args, extra_env=[auth, *_flower_broker_api(spec)]
    )
    check = {"httpGet": {"path": "/healthcheck", "port": flower.port}}  # needs no login
    container["ports"] = [{"name": "http", "containerPort": flower.port, "protocol": "TCP"}]
    container["readinessProbe"] = {**check, "periodSeconds": 5, "failureThreshold": 2}
    container["livenessProbe"] = {**check, "periodSeconds": 20, "failureThreshold": 3}
    template = _pod_template(
        spec,
        placement,
        spec.pod,
        labels={**naming.cluster_labels(owner.name), **selector},
        container=container,
        grace=10,
        secret_digest=secret_digest,
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, naming.flower_name(owner.name), selector),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": template,
        },
    }
    return _stamped(deployment)


def _flower_broker_api(spec: ClusterSpec) -> list[dict[str, Any]]:
    """On RabbitMQ with ``managementApi``, Flower's Broker tab reads queue lengths from the same
    API: ``FLOWER_BROKER_API`` holds the login, so it is composed by the kubelet from the
    Secret's keys (``$(VAR)`` expansion), never written into the Deployment. Flower parses it as
    a URL: a password with ``@ : / ? #`` must be stored percent-encoded for Flower, which the
    operator's own login would then send encoded; keep such characters out of it."""
    api = spec.broker.management
    if api is None:
        return []
    scheme, _, rest = api.url.partition("://")
    base = rest.rstrip("/")
    return [
        {
            "name": FLOWER_API_USER_ENV,
            "valueFrom": {"secretKeyRef": {"name": api.secret_name, "key": api.username_key}},
        },
        {
            "name": FLOWER_API_PASSWORD_ENV,
            "valueFrom": {"secretKeyRef": {"name": api.secret_name, "key": api.password_key}},
        },
        _env(
            "FLOWER_BROKER_API",
            f"{scheme}://$({FLOWER_API_USER_ENV}):$({FLOWER_API_PASSWORD_ENV})@{base}/api/",
        ),
    ]


def flower_service(owner: Owner, spec: ClusterSpec) -> dict[str, Any]:
    """A ClusterIP Service in front of Flower (``kubectl port-forward svc/<name>-flower``)."""
    selector = naming.flower_selector(owner.name)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, naming.flower_name(owner.name), selector),
        "spec": {
            "selector": selector,
            "ports": [
                {
                    "name": "http",
                    "port": spec.flower.port,
                    "targetPort": spec.flower.port,
                    "protocol": "TCP",
                }
            ],
        },
    }
    return _stamped(service)


def spec_hash(obj: Mapping[str, Any]) -> str:
    """A short, stable hash of a desired object, its own hash annotation and its replicas left
    out: a count the autoscaler changes is set by a field comparison (drift), never by a whole
    re-apply."""
    metadata = dict(obj.get("metadata", {}))
    annotations = {
        k: v for k, v in metadata.get("annotations", {}).items() if k != naming.SPEC_HASH_ANNOTATION
    }
    spec = {k: v for k, v in (obj.get("spec") or {}).items() if k != "replicas"}
    body = {**obj, "metadata": {**metadata, "annotations": annotations}, "spec": spec}
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _stamped(obj: dict[str, Any]) -> dict[str, Any]:
    pruned: dict[str, Any] = prune(obj)
    pruned["metadata"].setdefault("annotations", {})[naming.SPEC_HASH_ANNOTATION] = spec_hash(
        pruned
    )
    return pruned


_MEANINGFUL_WHEN_EMPTY: Final = frozenset({"emptyDir"})
"""Keys whose empty map still means something (``emptyDir: {}`` picks the volume type)."""


def prune(value: Any) -> Any:
    """Drop ``None`` and empty lists/maps, which the API server would not store anyway."""
    if isinstance(value, Mapping):
        kept = {k: prune(v) for k, v in value.items()}
        return {
            k: v
            for k, v in kept.items()
            if v is not None and (k in _MEANINGFUL_WHEN_EMPTY or v not in ({}, []))
        }
    if isinstance(value, list | tuple):
        return [prune(v) for v in value]
    return value


def _json_copy(value: Mapping[str, Json]) -> dict[str, Any]:
    """A plain deep copy: built objects never share (and so never mutate) a constant."""
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _metadata(owner: Owner, name: str, selector: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**naming.cluster_labels(owner.name), **selector},
        "ownerReferences": [owner.reference()],
    }


def _pod_template(
    spec: ClusterSpec,
    placement: Placement,
    pod: PodOverrides,
    *,
    labels: Mapping[str, str],
    container: dict[str, Any],
    grace: int,
    extra_volumes: Iterable[Mapping[str, Json]] = (),
    secret_digest: str | None = None,
) -> dict[str, Any]:
    annotations = dict(pod.annotations)
    if secret_digest is not None:
        annotations[naming.SECRET_DIGEST_ANNOTATION] = secret_digest
    return {
        "metadata": {
            "labels": {**pod.labels, **labels},  # ours win: the selector must match
            "annotations": annotations,
        },
        "spec": {
            "containers": [container],
            "terminationGracePeriodSeconds": grace,
            # Celery must not be PID 1: the kernel drops a SIGTERM that PID 1 has no handler
            # for yet, so a pod deleted while Celery starts would wait out its whole grace
            # period. With a shared process namespace the sandbox's pause process is PID 1.
            "shareProcessNamespace": True,
            "enableServiceLinks": False,
            "hostNetwork": pod.host_network,
            # Under host networking pods still resolve cluster names through the cluster DNS.
            "dnsPolicy": "ClusterFirstWithHostNet" if pod.host_network else None,
            "serviceAccountName": pod.service_account_name,
            # Celery never calls the Kubernetes API: no token unless the spec asks for one.
            "automountServiceAccountToken": bool(pod.automount_service_account_token),
            "priorityClassName": pod.priority_class_name,
            "securityContext": _json_copy(
                pod.security_context
                if pod.security_context is not None
                else RESTRICTED_POD_SECURITY
            ),
            "nodeSelector": dict(placement.node_selector),
            "tolerations": list(placement.tolerations),
            "affinity": placement.affinity,
            "imagePullSecrets": [{"name": name} for name in spec.image_pull_secrets],
            "volumes": [*pod.volumes, *extra_volumes, *_broker_ca_volumes(spec)],
        },
    }


def _container(
    name: str,
    spec: ClusterSpec,
    placement: Placement,
    pod: PodOverrides,
    args: list[str],
    *,
    extra_env: Iterable[Mapping[str, Json]] = (),
    extra_mounts: Iterable[Mapping[str, Json]] = (),
) -> dict[str, Any]:
    return {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["celery"],
        "args": args,
        "env": _merged_env([*_operator_env(spec), *extra_env], [*spec.env], [*placement.env]),
        "envFrom": [*spec.env_from, *placement.env_from],
        "resources": dict(placement.resources),
        "securityContext": _json_copy(
            pod.container_security_context
            if pod.container_security_context is not None
            else RESTRICTED_CONTAINER_SECURITY
        ),
        "volumeMounts": [*pod.volume_mounts, *extra_mounts, *_broker_ca_mounts(spec)],
    }


def _broker_ca_volumes(spec: ClusterSpec) -> list[dict[str, Any]]:
    ca = spec.broker.ca
    if ca is None:
        return []
    source = {"secretName": ca.name, "items": [{"key": ca.key, "path": BROKER_CA_FILE_NAME}]}
    return [{"name": BROKER_CA_VOLUME, "secret": source}]


def _broker_ca_mounts(spec: ClusterSpec) -> list[dict[str, Any]]:
    if spec.broker.ca is None:
        return []
    return [{"name": BROKER_CA_VOLUME, "mountPath": BROKER_CA_DIR, "readOnly": True}]


def _operator_env(spec: ClusterSpec) -> list[dict[str, Any]]:
    """What every Celery container learns from the operator: who it is and where the broker is.

    The broker URL comes from the user's Secret, never from the resource itself. Celery reads
    ``CELERY_BROKER_URL`` on its own; the transport options are given as JSON for the app (and the
    probes) to read, so that they name queue keys the way the operator counts them.
    """
    keys = spec.broker.keys
    options: dict[str, Json] = {
        "global_keyprefix": keys.global_keyprefix,
        "priority_steps": list(keys.priority_steps),
        "sep": keys.separator,
    }
    if spec.broker.master_name:
        options["master_name"] = spec.broker.master_name
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {
            "name": "CELERY_BROKER_URL",
            "valueFrom": {
                "secretKeyRef": {"name": spec.broker.secret_name, "key": spec.broker.secret_key}
            },
        },
        _env("CELERY_BROKER_TRANSPORT_OPTIONS", json.dumps(options, sort_keys=True)),
        *([_env(BROKER_CA_ENV, BROKER_CA_FILE)] if spec.broker.ca is not None else []),
    ]


def _add_probes(
    container: dict[str, Any],
    probes: Probes,
    *,
    startup: list[str],
    liveness: tuple[list[str], ProbeTiming],
    readiness: tuple[list[str], ProbeTiming] | None = None,
) -> None:
    """Run Celery through ``celery-probe run`` and give the container its exec probes.

    Exec, not HTTP: under host networking every pod on a node would need its own port, and a check
    is one file read in a fresh Python (about 30 ms of CPU; see the README for the measurements).
    The startup probe holds liveness off while the app imports and connects, however slow.
    """
    container["command"] = [PROBE_COMMAND, "run"]
    container["env"] = [*container["env"], _env(STATE_DIR_ENV, PROBE_STATE_DIR)]
    container["volumeMounts"] = [
        *container["volumeMounts"],
        {"name": PROBE_STATE_VOLUME, "mountPath": PROBE_STATE_DIR},
    ]
    live_command, live = liveness
    if live.enabled:
        container["startupProbe"] = _exec_probe(
            startup,
            ProbeTiming(
                period_seconds=STARTUP_PERIOD_SECONDS,
                failure_threshold=-(-probes.startup_timeout_seconds // STARTUP_PERIOD_SECONDS),
                timeout_seconds=min(live.timeout_seconds, STARTUP_PERIOD_SECONDS),
            ),
        )
        container["livenessProbe"] = {
            **_exec_probe(live_command, live),
            "terminationGracePeriodSeconds": LIVENESS_KILL_GRACE_SECONDS,
        }
    if readiness is not None and readiness[1].enabled:
        container["readinessProbe"] = _exec_probe(*readiness)


def _broker_timeout(timing: ProbeTiming) -> str:
    """How long a check may try the broker (it does only when the state says the worker lost
    it): half the kubelet's timeout, at most the check's own 2 s, so that a broker dropping
    connections silently cannot make the kubelet time the check out and count a failure."""
    return f"{min(2.0, timing.timeout_seconds / 2):g}"


def _exec_probe(command: list[str], timing: ProbeTiming) -> dict[str, Any]:
    return {
        "exec": {"command": command},
        "periodSeconds": timing.period_seconds,
        "timeoutSeconds": timing.timeout_seconds,
        "failureThreshold": timing.failure_threshold,
        "successThreshold": 1,
    }


def _probe_volumes(probes: Probes) -> list[dict[str, Any]]:
    """The state the checks read: in memory, private to the pod, kept across container restarts
    (``celery-probe run`` clears it when Celery starts again)."""
    if not probes.enabled:
        return []
    return [{"name": PROBE_STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]


def _merged_env(*layers: list[Mapping[str, Json]]) -> list[Mapping[str, Json]]:
    """Env lists merged by name, later layers winning, first-seen order kept."""
    merged: dict[str, Mapping[str, Json]] = {}
    for layer in layers:
        for item in layer:
            merged[item["name"]] = item
    return list(merged.values())


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def _flag(flag: str, value: int | str | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _beat_volumes(beat: Beat) -> list[dict[str, Any]]:
    if beat.persistence == "emptyDir":
        return [{"name": BEAT_SCHEDULE_VOLUME, "emptyDir": {}}]
    return []  # the claim template provides the volume


def _beat_claims(beat: Beat) -> list[dict[str, Any]]:
    if beat.persistence != "persistentVolumeClaim":
        return []
    return [
        {
            "metadata": {"name": BEAT_SCHEDULE_VOLUME},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": beat.storage_class_name,
                "resources": {"requests": {"storage": beat.persistence_size}},
            },
        }
    ]
