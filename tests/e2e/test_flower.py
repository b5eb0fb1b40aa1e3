"""The optional Flower on the real cluster: it serves the UI and API behind the login of the
user's Secret, sees the cluster's workers, and a cluster without the Secret is Degraded, not
served without a login."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from kopf.testing import KopfRunner

from tests.e2e.conftest import _accepts, _kubectl
from tests.e2e.harness import Clusters, _free_port
from tests.e2e.kube import wait_for

LOGIN = "admin:s3cret"


def _get(url: str, login: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", f"Basic {base64.b64encode(login.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, b""


@contextlib.contextmanager
def _reach(clusters: Clusters, port: int, host_network: bool) -> Iterator[str]:
    """Flower's base URL from this process: the node's port under host networking, else a
    ``kubectl port-forward`` to its Service."""
    if host_network:
        yield f"http://127.0.0.1:{port}"
        return
    local = _free_port()
    forward = subprocess.Popen(
        [*_kubectl(), "port-forward", "-n", clusters.namespace, "svc/demo-flower",
         f"{local}:{port}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(local), timeout=30, message="port-forward to Flower")
        yield f"http://127.0.0.1:{local}"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_flower_serves_its_api_behind_the_login_and_sees_the_workers(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    host_network: bool,
) -> None:
    port = _free_port()
    spec = sample_spec()
    spec["beat"] = {"enabled": False}
    spec["flower"] = {"enabled": True, "basicAuthSecretRef": {"name": "flower-login"}, "port": port}
    clusters.create("demo", spec)
    # The Secret is missing: Degraded, and no Flower (it would have no login).
    clusters.wait_phase("demo", "Degraded", timeout=60)
    message = clusters.condition("demo", "Degraded")["message"]
    assert message.startswith("spec.flower.basicAuthSecretRef.name: Secret 'flower-login'")
    assert "demo-flower" not in clusters.deployments()

    clusters.put_secret("flower-login", {"auth": LOGIN})
    clusters.wait_phase("demo", "Available", timeout=180)
    wait_for(
        lambda: clusters.get("demo")["status"].get("flower") == "Ready",
        timeout=120,
        message="Flower never became ready",
    )
    with _reach(clusters, port, host_network) as base:
        assert _get(f"{base}/healthcheck", None) == (200, b"OK")  # the probe needs no login
        assert _get(f"{base}/api/workers", None)[0] == 401
        assert _get(f"{base}/api/workers", "admin:wrong")[0] == 401

        def workers() -> set[str]:
            status, body = _get(f"{base}/api/workers?refresh=1", LOGIN)
            return set(json.loads(body)) if status == 200 else set()

        found = wait_for(workers, timeout=60, message="Flower never listed the workers")
        assert all(node.startswith("default@demo-worker-default-") for node in found), found
        status, page = _get(f"{base}/", LOGIN)
        assert status == 200
        assert b"Flower" in page
