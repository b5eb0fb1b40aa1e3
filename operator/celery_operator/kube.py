"""The adapter through which the reconcile talks to the Kubernetes API (the only such module).

Objects travel as plain dicts, the way the API serves them, so the pure modules never see a
client type. Every write goes through :meth:`Kube._write`, which counts it: a test holds the
count at zero for a reconcile of an unchanged cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from kubernetes import client, config

from celery_operator import GROUP, PLURAL, VERSION
from celery_operator.naming import MANAGER

log = logging.getLogger(__name__)

_CHILD_PATHS: Final = {
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "StatefulSet": "/apis/apps/v1/namespaces/{namespace}/statefulsets",
    "Service": "/api/v1/namespaces/{namespace}/services",
}
_CHILD_API_VERSIONS: Final = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1"}
_CLUSTERS: Final = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}"


class KubeError(Exception):
    """The API answered with an error status; ``status`` is the HTTP code, ``reason`` its word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def invalid(self) -> bool:
        return self.status == 422


@dataclass(frozen=True)
class EventTarget:
    """The object an Event is about."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


def load_api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, else from KUBECONFIG."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    """A thin, synchronous REST client for the few calls the operator makes."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 10.0) -> None:
        self._api = api
        self._timeout = timeout
        self.writes = 0
        """How many write requests (anything but GET) this client has sent."""

    # --- reads -----------------------------------------------------------------------------

    def get_cluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"{_CLUSTERS.format(namespace=namespace)}/{quote(name)}")

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"{_CHILD_PATHS[kind].format(namespace=namespace)}/{quote(name)}")

    def list_children(
        self, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        body = self._request(
            "GET", _CHILD_PATHS[kind].format(namespace=namespace), {"labelSelector": selector}
        )
        items: list[dict[str, Any]] = body.get("items", []) if body else []
        for item in items:  # list items come without their kind
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", _CHILD_API_VERSIONS[kind])
        return items

    def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        body = self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector}
        )
        items: list[dict[str, Any]] = body.get("items", []) if body else []
        return items

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        options: dict[str, Any] = {"preconditions": {"uid": uid}} if uid else {}
        try:
            self._write(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{quote(name)}",
                None,
                options,
                "application/json",
            )
        except KubeError as error:
            if not error.not_found:
                raise

    def list_events(
        self, namespace: str, kind: str, name: str, reason: str
    ) -> list[dict[str, Any]]:
        """The core/v1 Events about the object ``kind``/``name`` with this reason."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name},reason={reason}"
        body = self._request(
            "GET", f"/api/v1/namespaces/{namespace}/events", {"fieldSelector": selector}
        )
        items: list[dict[str, Any]] = body.get("items", []) if body else []
        return items

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret (its ``data`` still base64), or None when it does not exist."""
        return self._get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{quote(name)}")

    # --- writes ----------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over conflicting fields.

        Only the fields in ``obj`` become the operator's: fields other managers set are kept.
        """
        meta = obj["metadata"]
        path = f"{_CHILD_PATHS[obj['kind']].format(namespace=meta['namespace'])}/{meta['name']}"
        result = self._write(
            "PATCH",
            path,
            {"fieldManager": MANAGER, "force": "true"},
            obj,
            "application/apply-patch+yaml",
        )
        assert result is not None
        return result

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas (the autoscaler's one write per scaling decision)."""
        path = f"{_CHILD_PATHS['Deployment'].format(namespace=namespace)}/{quote(name)}"
        self._write(
            "PATCH",
            path,
            {"fieldManager": MANAGER},
            {"spec": {"replicas": replicas}},
            "application/merge-patch+json",
        )

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge ``annotations`` into a pod's; a pod gone meanwhile is no error."""
        try:
            self._write(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/{quote(name)}",
                {"fieldManager": MANAGER},
                {"metadata": {"annotations": dict(annotations)}},
                "application/merge-patch+json",
            )
        except KubeError as error:
            if not error.not_found:
                raise

    def delete_child(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a child and, first, its pods (foreground): a StatefulSet of the same name
        created afterwards can then never meet a pod of the old one."""
        options: dict[str, Any] = {"propagationPolicy": "Foreground"}
        if uid:
            options["preconditions"] = {"uid": uid}
        path = f"{_CHILD_PATHS[kind].format(namespace=namespace)}/{quote(name)}"
        try:
            self._write("DELETE", path, None, options, "application/json")
        except KubeError as error:
            if not error.not_found:
                raise

    def patch_cluster_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        path = f"{_CLUSTERS.format(namespace=namespace)}/{quote(name)}/status"
        return self._write("PATCH", path, None, {"status": status}, "application/merge-patch+json")

    def emit_event(
        self,
        target: EventTarget,
        *,
        reason: str,
        message: str,
        warning: bool,
        now: datetime,
    ) -> None:
        """Post a core/v1 Event about ``target``; a failure is logged, never raised."""
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{target.name}.", "namespace": target.namespace},
            "involvedObject": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "name": target.name,
                "namespace": target.namespace,
                "uid": target.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._write(
                "POST",
                f"/api/v1/namespaces/{target.namespace}/events",
                None,
                event,
                "application/json",
            )
        except KubeError as error:
            log.warning("could not post event %s on %s: %s", reason, target.name, error)

    # --- plumbing --------------------------------------------------------------------------

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", path)
        except KubeError as error:
            if error.not_found:
                return None
            raise

    def _write(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
    ) -> dict[str, Any] | None:
        self.writes += 1
        return self._request(method, path, query, body, content_type)

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(method, url, headers, body, _request_timeout=self._timeout)
        raw = response.read()  # type: ignore[no-untyped-call]
        text = raw.decode("utf-8") if raw else ""
        if not 200 <= response.status < 300:
            try:
                detail = json.loads(text)
                raise KubeError(
                    response.status, detail.get("reason", ""), detail.get("message", text)
                )
            except json.JSONDecodeError:
                raise KubeError(response.status, "", text) from None
        decoded: dict[str, Any] | None = json.loads(text) if text else None
        return decoded
