"""The command lines and environment the operator builds run as real Celery processes.

The builders' output (what a pod would run) is executed here against a real Redis: the worker
takes its unique node name, consumes exactly the pool's queues, follows the transport options
given as JSON, and beat runs without a pidfile and sends its schedule. Both start through
``celery-probe run``, and the exec probes built for them pass against them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from celery_operator import builders
from celery_operator.spec import parse_cluster
from tests.integration.procs import (
    RedisServer,
    client_app,
    demo_env,
    start_celery,
    transport_options,
    wait_for,
    wait_until_pinged,
)
from tests.unit.samples import OWNER

SPEC: dict[str, Any] = {
    "image": "unused",
    "app": "celery_demo",
    "broker": {"urlSecretRef": {"name": "broker"}, "transportOptions": {"globalKeyprefix": "int:"}},
    "env": [{"name": "CELERY_DEMO_BEAT_INTERVAL", "value": "1"}],
    "workers": [{"name": "emails", "queues": ["mail", "mail-bulk"], "concurrency": 2,
                 "softTimeLimitSeconds": 20, "timeLimitSeconds": 30}],
}  # fmt: skip


def _pod(kind: str) -> dict[str, Any]:
    children = builders.desired_children(OWNER, parse_cluster(OWNER.name, SPEC))
    [child] = [c for c in children if c["kind"] == kind]
    container: dict[str, Any] = child["spec"]["template"]["spec"]["containers"][0]
    return container


def _process_env(
    container: dict[str, Any], broker_url: str, pod_name: str, probe_dir: Path
) -> dict[str, str]:
    """The container's env as the kubelet would give it: Secret and fieldRef values resolved, and
    the probe state in the test's directory instead of the pod's volume."""
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert plain[builders.STATE_DIR_ENV] == builders.PROBE_STATE_DIR
    resolved = {"CELERY_BROKER_URL": broker_url, "POD_NAME": pod_name, "POD_NAMESPACE": "apps"}
    return demo_env(broker_url, {**plain, **resolved, builders.STATE_DIR_ENV: str(probe_dir)})


def _probe_passes(container: dict[str, Any], probe: str, env: dict[str, str]) -> bool:
    """Run the container's exec probe as the kubelet would, in the container's environment."""
    command = container[probe]["exec"]["command"]
    assert command[0] == "celery-probe"
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / command[0]), *command[1:]], env=env, capture_output=True, check=False
    )
    return done.returncode == 0


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def test_built_worker_runs_with_its_node_name_queues_and_transport_options(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    container = _pod("Deployment")
    assert container["command"] == ["celery-probe", "run"]
    env = _process_env(container, redis_server.url, "demo-worker-emails-abc12", tmp_path / "p")
    args = _expand(container["args"], env)
    assert args[:2] == ["-A", "celery_demo"]
    assert not _probe_passes(container, "startupProbe", env)
    worker = start_celery(args[2:], env, tmp_path / "worker.log", probes=True)
    worker.node = "emails@demo-worker-emails-abc12"
    app = client_app(redis_server.url, transport_options(env))
    try:
        wait_until_pinged(worker, app)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            wait_for(
                lambda probe=probe: _probe_passes(container, probe, env),  # type: ignore[misc]
                timeout=10,
                message=f"the worker's {probe} never passed",
            )
        queues = app.control.inspect(destination=[worker.node], timeout=2).active_queues() or {}
        assert sorted(q["name"] for q in queues[worker.node]) == ["mail", "mail-bulk"]
        result = app.send_task("celery_demo.tasks.add", args=(2, 3), queue="mail-bulk")
        assert result.get(timeout=30) == 5
        # The prefix from the operator's JSON reached kombu: the queue's key carries it.
        client = redis.Redis.from_url(redis_server.url)
        app.send_task("celery_demo.tasks.add", args=(1, 1), queue="unconsumed")
        assert client.llen("int:unconsumed") == 1
        assert client.llen("unconsumed") == 0
    finally:
        assert worker.stop() == 0, worker.log_tail()


def test_built_beat_runs_without_a_pidfile_and_sends_its_schedule(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    container = _pod("StatefulSet")
    env = _process_env(container, redis_server.url, "demo-beat-0", tmp_path / "p")
    args = [a.replace(builders.BEAT_SCHEDULE_DIR, str(tmp_path)) for a in container["args"]]
    beat = start_celery(args[2:], env, tmp_path / "beat.log", probes=True)
    client = redis.Redis.from_url(redis_server.url)
    try:
        # No worker runs: beat's messages wait in the (prefixed) default queue.
        wait_for(
            lambda: client.llen("int:celery") >= 2,
            timeout=30,
            message="beat sent no beat_tick",
        )
        beat.assert_running()
        assert _probe_passes(container, "livenessProbe", env)
        assert not list(tmp_path.glob("*.pid")), "beat wrote a pidfile"
        assert (tmp_path / "celerybeat-schedule").exists() or list(
            tmp_path.glob("celerybeat-schedule*")
        )
    finally:
        beat.stop()
