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
OUTAGE_SECONDS: Final = 120.0
"""Four times the default broker grace: the checks try the broker for most of it."""
RESUMED_WITHIN_SECONDS: Final = 10.0
"""Issue 12's target: tasks flow again within this of the broker's return."""


def probe(state_dir: Path, check: str, *options: str, broker_url: str = "") -> tuple[bool, str]:
    """Run ``celery-probe <check>`` as the kubelet would, in an environment with the container's
    ``CELERY_BROKER_URL`` (``broker_url``); (passed, the line it printed)."""
    env = {**os.environ, "CELERY_BROKER_URL": broker_url} if broker_url else None
    result = subprocess.run(
        [sys.executable, "-m", "celery_probes.cli", check, "--dir", str(state_dir), *options],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env=env,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0, result.stdout.strip()


class Kubelet:
    """Runs one check every ``period`` seconds and remembers the results."""

    def __init__(
        self,
        state_dir: Path,
        check: str,
        *options: str,
        failure_threshold: int = 3,
        broker_url: str = "",
    ):
        self.state_dir = state_dir
        self.check = check
        self.options = options
        self.failure_threshold = failure_threshold
        self.broker_url = broker_url
        self.results: list[tuple[bool, str]] = []

    def once(self) -> tuple[bool, str]:
        result = probe(self.state_dir, self.check, *self.options, broker_url=self.broker_url)
        self.results.append(result)
        return result

    def run_for(self, seconds: float, period: float = 1.0) -> list[tuple[bool, str]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.once()
            time.sleep(period)
        return self.results

    def would_restart(self) -> bool:
        run = 0
        for passed, _ in self.results:
            run = 0 if passed else run + 1
            if run >= self.failure_threshold:
                return True
        return False


def wait_probe(
    state_dir: Path,
    check: str,
    *options: str,
    passing: bool,
    timeout: float,
    broker_url: str = "",
) -> str:
    """Poll a check until it passes (or fails); return its last line."""
    last: list[str] = []

    def reached() -> bool:
        passed, line = probe(state_dir, check, *options, broker_url=broker_url)
        last[:] = [line]
        return passed is passing

    try:
        wait_for(reached, timeout=timeout, interval=0.3, message=f"{check} {options}")
    except AssertionError as error:
        raise AssertionError(
            f"{error}: never {'passed' if passing else 'failed'}; last: {last}"
        ) from None
    return last[0]


@pytest.fixture
def probed(celery_worker: WorkerFactory, tmp_path: Path) -> tuple[CeleryProcess, Path]:
    """A prefork worker (2 slots, queues a and b) started through ``celery-probe run``."""
    state_dir = tmp_path / "probe-state"
    worker = celery_worker(
        "-Q", "a,b", "-c", "2",
        "--include", "worker_plugins.block_loop,worker_plugins.cut_broker",
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


def test_broker_down_past_the_grace_keeps_liveness_naming_only_host_and_port(
    probed: tuple[CeleryProcess, Path], redis_server: RedisServer
) -> None:
    _, state_dir = probed
    redis_server.stop()
    line = wait_probe(
        state_dir, "worker-live", "--broker-grace", "2",
        passing=True, timeout=15, broker_url=redis_server.url,
    )  # fmt: skip
    wait_for(
        lambda: "from this pod too" in probe(
            state_dir, "worker-live", "--broker-grace", "2", broker_url=redis_server.url
        )[1],
        timeout=10,
        message="the check never tried the broker",
    )  # fmt: skip
    passed, line = probe(
        state_dir, "worker-live", "--broker-grace", "2", broker_url=redis_server.url
    )
    assert passed, line
    assert line == (
        f"ok: broker unreachable from this pod too (redis://127.0.0.1:{redis_server.port}:"
        " connection refused): waiting for it, not restarting"
    )
    assert not probe(state_dir, "worker-ready")[0]


def test_a_worker_cut_off_a_broker_that_answers_fails_liveness_after_the_grace(
    probed: tuple[CeleryProcess, Path], redis_server: RedisServer
) -> None:
    worker, state_dir = probed
    client = _client(redis_server.url)
    try:
        [reply] = client.control.broadcast(
            "cut_broker", destination=[worker.node], reply=True, timeout=5
        )
    finally:
        client.close()
    assert reply[worker.node]["ok"].startswith("cut off"), reply
    line = wait_probe(state_dir, "worker-ready", passing=False, timeout=10)
    assert "broker connection lost" in line
    cut_at = time.monotonic()
    grace = 5
    live = Kubelet(
        state_dir, "worker-live", "--broker-grace", str(grace), broker_url=redis_server.url
    )
    while live.once()[0]:
        assert time.monotonic() - cut_at < grace + 5, live.results
        time.sleep(0.5)
    assert time.monotonic() - cut_at > grace - 1, live.results
    assert any("reconnecting to the broker" in line for _, line in live.results), live.results
    _, line = live.results[-1]
    assert line.startswith("FAIL: broker answers but this worker has been disconnected for"), line
    assert line.endswith(f"(grace {grace}s): redis://127.0.0.1:{redis_server.port} answered")
    # Everyone else still has the broker, and the worker keeps trying (and failing) to reach it.
    assert redis_server.client().ping()
    worker.assert_running()
    assert not probe(state_dir, "worker-ready")[0]


def test_a_long_outage_restarts_nobody_and_work_resumes_within_seconds(
    probed: tuple[CeleryProcess, Path],
    celery_beat: BeatFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    worker, state_dir = probed
    beat_dir = tmp_path / "beat-state"
    beat = celery_beat(
        "--max-interval", "2",
        env={"CELERY_PROBE_DIR": str(beat_dir), "CELERY_DEMO_BEAT_INTERVAL": "2"},
        probes=True,
    )  # fmt: skip
    wait_probe(beat_dir, "beat-live", passing=True, timeout=15)
    url = redis_server.url
    live = Kubelet(state_dir, "worker-live", broker_url=url)  # the default 30 s grace
    ready = Kubelet(state_dir, "worker-ready", broker_url=url, failure_threshold=1)
    beat_live = Kubelet(beat_dir, "beat-live", "--grace", "2", broker_url=url)
    checks = (live, ready, beat_live)

    redis_server.stop()
    down_at = time.monotonic()
    wait_probe(state_dir, "worker-ready", passing=False, timeout=10)
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        for check in checks:
            check.once()
        time.sleep(3)
    during = [list(check.results) for check in checks]
    back_at = time.monotonic()
    redis_server.start()
    client = _client(url)
    try:
        result = client.send_task("celery_demo.tasks.add", args=[2, 3], queue="a")
        # The checks go on every 3 s, as the kubelet's would, while the worker reconnects.
        resumed: float | None = None
        next_check = back_at
        while time.monotonic() - back_at < 15:
            if time.monotonic() >= next_check:
                for check in checks:
                    check.once()
                next_check += 3
            if resumed is None and result.ready():
                resumed = time.monotonic() - back_at
            time.sleep(0.1)
        assert result.get(timeout=1) == 5
    finally:
        client.close()
    after = [check.results[len(before) :] for check, before in zip(checks, during, strict=True)]
    print(f"\nfirst task done within {resumed}s of Redis returning; checks since: {after}")

    live_during, ready_during, beat_during = during
    assert all(passed for passed, _ in live_during), live_during
    assert all(passed for passed, _ in beat_during), beat_during
    waited = "broker unreachable from this pod too"
    assert sum(waited in line for _, line in live_during) >= 20, live_during
    assert sum(waited in line for _, line in beat_during) >= 20, beat_during
    assert all(
        line == "FAIL: broker connection lost: consuming nothing" for _, line in ready_during
    ), ready_during
    assert resumed is not None, "the first task after the outage did not run in 15 s"
    assert resumed < RESUMED_WITHIN_SECONDS
    assert after[1][-1] == (True, "ok: consuming a, b")
    assert not live.would_restart(), live.results
    assert not beat_live.would_restart(), beat_live.results
    worker.assert_running()
    beat.assert_running()


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


def test_beat_liveness_follows_the_scheduler_loop(
    celery_beat: BeatFactory, tmp_path: Path, redis_url: str
) -> None:
    state_dir = tmp_path / "beat-state"
    beat = celery_beat("--max-interval", "2", env={"CELERY_PROBE_DIR": str(state_dir)}, probes=True)
    wait_probe(state_dir, "beat-live", "--grace", "2", passing=True, timeout=15)
    beat.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = wait_probe(
            state_dir, "beat-live", "--grace", "2",
            passing=False, timeout=15, broker_url=redis_url,
        )  # fmt: skip
        assert "scheduler loop stalled" in line
        assert line.endswith("; the broker answers: " + redis_url.removesuffix("/0") + " answered")
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
