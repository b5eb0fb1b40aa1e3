"""Plain helpers for end-to-end tests: poll a condition, read and describe pods.

``wait_for`` is the only way e2e tests wait: it polls at a short interval and, on timeout, raises
an error that says what was awaited and what was last seen, never a bare long sleep.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def kubectl_command() -> list[str]:
    """kubectl from PATH, else the one in the cluster's multi-call binary."""
    found = shutil.which("kubectl")
    if found:
        return [found]
    build = subprocess.run(
        [str(ROOT / "cluster" / "k8s" / "build.sh")], capture_output=True, text=True, check=True
    )
    return [build.stdout.strip().splitlines()[-1], "kubectl"]


class WaitTimeoutError(AssertionError):
    """A polled condition did not hold in time (an AssertionError, so pytest shows it as such)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.5,
    message: str | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    An exception raised by ``predicate`` counts as "not yet" (the API may be briefly unavailable,
    an object not created yet), and the last one is named in the error raised after ``timeout``
    seconds, with the last value seen and ``message``.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as error:  # reported below if it persists
            last = error
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise WaitTimeoutError(f"{what}: not true after {timeout:g}s (last: {last!r})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def pod_logs(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    container: str | None = None,
    tail_lines: int | None = None,
    previous: bool = False,
) -> str:
    """The log of one container of a pod (of its previous run with ``previous=True``)."""
    kwargs: dict[str, Any] = {"previous": previous}
    if container:
        kwargs["container"] = container
    if tail_lines is not None:
        kwargs["tail_lines"] = tail_lines
    core = client.CoreV1Api(api_client)
    return str(core.read_namespaced_pod_log(name, namespace, **kwargs))


def describe_pod(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """A short account of a pod for failure messages: phase, container states, recent events."""
    core = client.CoreV1Api(api_client)
    try:
        pod = core.read_namespaced_pod(name, namespace)
    except client.ApiException as error:
        return f"pod {namespace}/{name}: cannot read it ({error.status} {error.reason})"
    status_of_pod = pod.status or client.V1PodStatus()
    lines = [f"pod {namespace}/{name}: phase={status_of_pod.phase}"]
    for status in status_of_pod.container_statuses or []:
        lines.append(
            f"  container {status.name}: ready={status.ready} restarts={status.restart_count}"
            f" state={_state(status.state)}"
        )
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    lines.extend(f"  event {e.type} {e.reason}: {e.message}" for e in events[-10:])
    return "\n".join(lines)


def _state(state: Any) -> str:
    if state.running:
        return "running"
    if state.waiting:
        return f"waiting ({state.waiting.reason}: {state.waiting.message})"
    if state.terminated:
        return f"terminated (exit {state.terminated.exit_code}, {state.terminated.reason})"
    return "unknown"


def pod_ready(api_client: client.ApiClient, namespace: str, name: str) -> bool:
    """True when the pod's Ready condition is True."""
    pod = client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a running process (field 22 of /proc/PID/stat); None when it is
    gone or a zombie (exited, waiting to be reaped). With the PID it names one process for good."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]
