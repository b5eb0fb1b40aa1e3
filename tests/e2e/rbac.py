"""The install manifests as a user applies them, and the operator logged in with nothing but
their permissions: helpers of the RBAC tests (``test_rbac.py``, ``test_operator.py``).

Manifests are rendered with ``kubectl kustomize`` and applied with ``kubectl apply``, the way a
user installs them; the operator then gets a kubeconfig holding only a TokenRequest token of the
install's ServiceAccount, so a verb the code needs and the manifests lack shows up as a 403.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.config import kube_config

from tests.e2e.kube import kubectl_command as _kubectl

TOKEN_SECONDS = 3600


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize directory``, as objects."""
    done = subprocess.run(
        [*_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def kustomize_in_namespace(overlay: Path, namespace: str, into: Path) -> list[dict[str, Any]]:
    """``overlay`` rendered as a user's copy with ``namespace:`` set to ``namespace`` renders:
    a kustomization in ``into`` that takes the overlay and sets only that field (kustomize's
    namespace transformer, the same that the copy's own field drives)."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                # kustomize takes no absolute paths here
                "resources": [os.path.relpath(overlay, into)],
            }
        )
    )
    return kustomize(into)


def manifests(path: Path) -> list[dict[str, Any]]:
    """The objects of a plain manifest file (what ``kubectl apply -f path`` applies)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pick(docs: Sequence[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    """The objects of these kinds, in the render's order."""
    return [doc for doc in docs if doc["kind"] in kinds]


def named(docs: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def kubectl_apply(kubeconfig: str, docs: Sequence[dict[str, Any]]) -> None:
    _kubectl_with(kubeconfig, docs, "apply", "-f", "-")


def kubectl_delete(kubeconfig: str, docs: Sequence[dict[str, Any]]) -> None:
    """Delete the objects and wait until they are gone (a namespace until it is finalized)."""
    _kubectl_with(kubeconfig, docs, "delete", "--ignore-not-found", "--wait=true", "-f", "-")


def _kubectl_with(kubeconfig: str, docs: Sequence[dict[str, Any]], *args: str) -> None:
    done = subprocess.run(
        [*_kubectl(), f"--kubeconfig={kubeconfig}", *args],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"


def service_account_kubeconfig(
    api_client: client.ApiClient,
    admin_kubeconfig: str,
    namespace: str,
    service_account: str,
    path: Path,
) -> Path:
    """A kubeconfig at ``path`` for the admin's cluster with one user: a fresh token of the
    ServiceAccount (TokenRequest), nothing else."""
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        service_account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        ),
    )
    assert token.status is not None
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    user = f"{namespace}:{service_account}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": user, "user": {"token": token.status.token}}],
                "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
                "current-context": user,
            }
        )
    )
    return path


@contextlib.contextmanager
def kubeconfig_for_this_process(path: Path, previous: str) -> Iterator[None]:
    """Point Kopf and the kubernetes package (which reads $KUBECONFIG on import) at ``path``."""
    os.environ["KUBECONFIG"] = str(path)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield
    finally:
        os.environ["KUBECONFIG"] = previous
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = previous


def refusals(output: str, expected: re.Pattern[str] | None = None) -> list[str]:
    """The lines of the operator's log that report a 403 (Kopf's retries, the operator's own
    logged errors), but for those ``expected`` matches: each is a verb the install lacks. Every
    403 of the API server says Forbidden (its reason) and "is forbidden" (its message)."""
    return [
        line
        for line in output.splitlines()
        if "forbidden" in line.lower() and not (expected and expected.search(line))
    ]


def allowed(
    api_client: client.ApiClient,
    user: str,
    verb: str,
    resource: str,
    namespace: str,
    group: str = "",
    subresource: str | None = None,
) -> bool:
    """Whether the API server's authorizer lets ``user`` do this (a SubjectAccessReview)."""
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace,
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource,
                ),
            )
        )
    )
    return bool(review.status and review.status.allowed)
