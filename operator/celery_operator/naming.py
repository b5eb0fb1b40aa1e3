"""Names and labels of everything the operator makes: one place owns each naming rule."""

from __future__ import annotations

from typing import Final

from celery_operator import GROUP

MANAGER: Final = "celery-operator"
"""Field manager for server-side apply, and the value of ``app.kubernetes.io/managed-by``."""

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
POOL_LABEL: Final = f"{GROUP}/pool"
SPEC_HASH_ANNOTATION: Final = f"{GROUP}/spec-hash"
"""Hash of the desired object last applied: a changed spec is applied even where the change is
a removal, which a "desired is a subset of live" comparison alone cannot see."""

SECRET_DIGEST_ANNOTATION: Final = f"{GROUP}/secret-digest"
"""On pod templates: a keyed digest (never the value) of the Secret values the pods read as
environment variables, which a running pod never sees change: a rotated value rolls them."""

WORKER: Final = "worker"
BEAT: Final = "beat"
FLOWER: Final = "flower"


def worker_name(cluster: str, pool: str) -> str:
    return f"{cluster}-worker-{pool}"


def beat_name(cluster: str) -> str:
    return f"{cluster}-beat"


def flower_name(cluster: str) -> str:
    """The Flower Deployment and its Service."""
    return f"{cluster}-flower"


def node_name(pool: str) -> str:
    """Celery's ``--hostname`` for a worker: pool name at pod name, unique per pod.

    Kubernetes expands ``$(POD_NAME)`` in container args from the container's env. The pod name,
    not ``%h``, because under host networking ``%h`` is the node's hostname, shared by every pod.
    """
    return f"{pool}@$(POD_NAME)"


def cluster_labels(cluster: str) -> dict[str, str]:
    """Labels on every child of ``cluster``; also the selector that lists them."""
    return {
        NAME_LABEL: "celery",
        INSTANCE_LABEL: cluster,
        MANAGED_BY_LABEL: MANAGER,
    }


def worker_selector(cluster: str, pool: str) -> dict[str, str]:
    """The immutable Deployment selector of a pool: never change what goes in here."""
    return {INSTANCE_LABEL: cluster, COMPONENT_LABEL: WORKER, POOL_LABEL: pool}


def beat_selector(cluster: str) -> dict[str, str]:
    return {INSTANCE_LABEL: cluster, COMPONENT_LABEL: BEAT}


def flower_selector(cluster: str) -> dict[str, str]:
    return {INSTANCE_LABEL: cluster, COMPONENT_LABEL: FLOWER}
