"""The probes against real ``celery worker`` and ``celery beat`` processes and a real Redis.

Every check runs the real ``celery-probe`` command, as the kubelet does. ``Kubelet`` below applies
the kubelet's rule to a series of results: a container is restarted after ``failure_threshold``
consecutive failures, so a test of "keeps passing" asserts that no such run occurs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest
from celery import Celery

from tests.integration.procs import (
    APP_DIR,
    BeatFactory,
    CeleryProcess,
    RedisServer,
    WorkerFactory,
    client_app,
    wait_for,
)

PLUGINS: Final = Path(__file__).resolve().parent
MAX_AGE: Final = 3.0
"""A shorter heartbeat limit than the default, so that failures show sooner in tests."""


def probe(state_dir: Path, check: str, *options: str) -> tuple[bool, str]:
    """Run ``celery-probe <check>`` as the kubelet would; (passed, the line it printed)."""
    result = subprocess.run(
        [sys.executable, "-m", "celery_probes.cli", check, "--dir", str(state_dir), *options],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0, result.stdout.strip()


class Kubelet:
    """Runs one check every ``period`` seconds and remembers the results."""

    def __init__(self, state_dir: Path, check: str, *options: str, failure_threshold: int = 3):
        self.state_dir = state_dir
        self.check = check
        self.options = options
        self.failure_threshold = failure_threshold
        self.results: list[tuple[bool, str]] = []

    def run_for(self, seconds: float, period: float = 1.0) -> list[tuple[bool, str]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.results.append(probe(self.state_dir, self.check, *self.options))
            time.sleep(period)
        return self.results

    def would_restart(self) -> bool:
        run = 0
        for passed, _ in self.results:
            run = 0 if passed else run + 1
            if run >= self.failure_threshold:
                return True
        return False


def wait_probe(state_dir: Path, check: str, *options: str, passing: bool, timeout: float) -> str:
    """Poll a check until it passes (or fails); return its last line."""
    last: list[str] = []

    def reached() -> bool:
        passed, line = probe(state_dir, check, *options)
        last[:] = [line]
        return passed is passing

    wait_for(
        reached,
        timeout=timeout,
        interval=0.3,
        message=f"{check} never {'passed' if passing else 'failed'}; last: {last}",
    )
    return last[0]


@pytest.fixture
def probed(celery_worker: WorkerFactory, tmp_path: Path) -> tuple[CeleryProcess, Path]:
    """A prefork worker (2 slots, queues a and b) started through ``celery-probe run``."""
    state_dir = tmp_path / "probe-state"
    worker = celery_worker(
        "-Q", "a,b", "-c", "2", "--include", "worker_plugins.block_loop",
        name="probed",
        env={"CELERY_PROBE_DIR": str(state_dir), "PYTHONPATH": _pythonpath()},
        probes=True,
    )  # fmt: skip
    wait_probe(state_dir, "worker-ready", passing=True, timeout=10)
    return worker, state_dir


def _pythonpath() -> str:
    return f"{APP_DIR}{os.pathsep}{PLUGINS}"


def _client(redis_url: str) -> Celery:
    return client_app(redis_url)


def test_healthy_worker_is_live_and_ready(probed: tuple[CeleryProcess, Path]) -> None:
    _, state_dir = probed
    passed, line = probe(state_dir, "worker-live")
    assert passed, line
    assert line.startswith("ok: main loop alive")
    assert probe(state_dir, "worker-ready") == (True, "ok: consuming a, b")


def test_no_state_fails_with_a_reason(tmp_path: Path) -> None:
    passed, line = probe(tmp_path, "worker-live")
    assert not passed
    assert "not started through `celery-probe run`" in line
    passed, line = probe(tmp_path, "beat-live")
    assert not passed


def test_stopped_main_process_fails_liveness_and_recovers(
    probed: tuple[CeleryProcess, Path],
) -> None:
    worker, state_dir = probed
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = wait_probe(
            state_dir, "worker-live", "--max-age", str(MAX_AGE), passing=False, timeout=15
        )
        assert "no heartbeat" in line
        assert time.monotonic() - started < MAX_AGE + 3
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    wait_probe(state_dir, "worker-live", "--max-age", str(MAX_AGE), passing=True, timeout=10)


def test_blocked_consumer_loop_fails_liveness(
    probed: tuple[CeleryProcess, Path], redis_url: str
) -> None:
    worker, state_dir = probed
    client = _client(redis_url)
    try:
        client.control.broadcast("block_loop", arguments={"seconds": 12}, destination=[worker.node])
        line = wait_probe(
            state_dir, "worker-live", "--max-age", str(MAX_AGE), passing=False, timeout=10
        )
        assert "the main process is stopped or its loop is blocked" in line
        # The loop comes back after the call returns, and so does the probe.
        wait_probe(state_dir, "worker-live", "--max-age", str(MAX_AGE), passing=True, timeout=20)
    finally:
        client.close()


def test_every_slot_busy_with_a_long_task_stays_live_and_ready(
    probed: tuple[CeleryProcess, Path], redis_url: str
) -> None:
    worker, state_dir = probed
    client = _client(redis_url)
    try:
        results = [
            client.send_task("celery_demo.tasks.sleep", args=[15], queue="a") for _ in range(2)
        ]
        wait_for(
            lambda: len(_active(client, worker.node)) == 2,
            timeout=10,
            message="both slots never became busy",
        )
        live = Kubelet(state_dir, "worker-live", "--max-age", str(MAX_AGE), failure_threshold=1)
        live.run_for(4 * MAX_AGE)
        assert all(passed for passed, _ in live.results), live.results
        assert len(_active(client, worker.node)) == 2, "the long tasks ended before the checks did"
        assert probe(state_dir, "worker-ready")[0]
        for result in results:
            result.forget()
    finally:
        client.close()


def test_broker_blip_keeps_liveness_and_drops_readiness_until_reconnected(
    probed: tuple[CeleryProcess, Path], redis_server: RedisServer
) -> None:
    _, state_dir = probed
    redis_server.stop()
    live = Kubelet(state_dir, "worker-live", failure_threshold=1)
    live.run_for(4)
    passed, line = probe(state_dir, "worker-ready")
    assert not passed
    assert "broker connection lost" in line
    redis_server.start()
    # Celery's reconnect backoff (2 s, 4 s, 6 s...) decides when it is back.
    wait_probe(state_dir, "worker-ready", passing=True, timeout=30)
    live.run_for(2)
    assert not live.would_restart(), live.results
    assert any("reconnecting to the broker" in line for _, line in live.results), live.results


def test_broker_lost_beyond_grace_fails_liveness(
    probed: tuple[CeleryProcess, Path], redis_server: RedisServer
) -> None:
    _, state_dir = probed
    redis_server.stop()
    line = wait_probe(state_dir, "worker-live", "--broker-grace", "3", passing=False, timeout=15)
    assert "broker connection lost" in line
    # With the default grace the same worker still counts as alive.
    assert probe(state_dir, "worker-live")[0]


def test_queue_not_consumed_fails_readiness_not_liveness(
    probed: tuple[CeleryProcess, Path], redis_url: str
) -> None:
    worker, state_dir = probed
    passed, line = probe(state_dir, "worker-ready", "--queues", "a,b,c")
    assert not passed
    assert line.endswith("not consuming queue(s) c")
    client = _client(redis_url)
    try:
        client.control.cancel_consumer("b", destination=[worker.node], reply=True, timeout=5)
        line = wait_probe(state_dir, "worker-ready", passing=False, timeout=10)
        assert "not consuming queue(s) b" in line
        assert probe(state_dir, "worker-live")[0]
        # The probe agrees with what `celery inspect active_queues` answers, without asking.
        replies = client.control.inspect(destination=[worker.node], timeout=5, limit=1)
        queues = (replies.active_queues() or {})[worker.node]
        assert [q["name"] for q in queues] == ["a"]
    finally:
        client.close()


def test_warm_shutdown_is_unready_but_live_until_the_task_ends(
    probed: tuple[CeleryProcess, Path], redis_url: str
) -> None:
    worker, state_dir = probed
    client = _client(redis_url)
    try:
        client.send_task("celery_demo.tasks.sleep", args=[8], queue="a")
        wait_for(lambda: _active(client, worker.node), timeout=10, message="the task never started")
    finally:
        client.close()
    worker.proc.send_signal(signal.SIGTERM)
    line = wait_probe(state_dir, "worker-ready", passing=False, timeout=5)
    assert "warm shutdown" in line
    live = Kubelet(state_dir, "worker-live", "--max-age", str(MAX_AGE), failure_threshold=1)
    while worker.proc.poll() is None:
        live.run_for(1)
    assert worker.proc.returncode == 0, worker.log_tail()
    assert all(passed for passed, _ in live.results), live.results
    assert len(live.results) >= 3, "the warm shutdown ended before it could be probed"


def test_solo_pool_running_a_task_stays_live(
    celery_worker: WorkerFactory, tmp_path: Path, redis_url: str
) -> None:
    state_dir = tmp_path / "solo-state"
    worker = celery_worker(
        "-Q", "a", "--pool", "solo",
        name="solo",
        env={"CELERY_PROBE_DIR": str(state_dir)},
        probes=True,
    )  # fmt: skip
    wait_probe(state_dir, "worker-ready", passing=True, timeout=10)
    client = _client(redis_url)
    try:
        client.send_task("celery_demo.tasks.sleep", args=[3 * MAX_AGE], queue="a")
        line = wait_probe(
            state_dir, "worker-ready", "--max-age", str(MAX_AGE), passing=False, timeout=15
        )
        assert "busy" in line
        passed, line = probe(state_dir, "worker-live", "--max-age", str(MAX_AGE))
        assert passed, line
        assert "running a task in the main process" in line
    finally:
        client.close()
    wait_probe(state_dir, "worker-ready", passing=True, timeout=3 * MAX_AGE + 5)
    worker.assert_running()


def test_beat_liveness_follows_the_scheduler_loop(celery_beat: BeatFactory, tmp_path: Path) -> None:
    state_dir = tmp_path / "beat-state"
    beat = celery_beat("--max-interval", "2", env={"CELERY_PROBE_DIR": str(state_dir)}, probes=True)
    wait_probe(state_dir, "beat-live", "--grace", "2", passing=True, timeout=15)
    beat.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = wait_probe(state_dir, "beat-live", "--grace", "2", passing=False, timeout=15)
        assert "scheduler loop stalled" in line
        # The last tick asked for at most 2 s of sleep; 2 s of grace more, and it is late.
        assert time.monotonic() - started < 2 + 2 + 3
        assert beat.proc.poll() is None, "the stopped beat still exists as a process"
    finally:
        beat.proc.send_signal(signal.SIGCONT)
    wait_probe(state_dir, "beat-live", "--grace", "2", passing=True, timeout=10)


def _active(client: Celery, node: str) -> Sequence[object]:
    replies = client.control.inspect(destination=[node], timeout=2, limit=1).active() or {}
    active: Sequence[object] = replies.get(node, [])
    return active
