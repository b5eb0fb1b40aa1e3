"""Fixtures of the integration tier: a private Redis per test, real Celery workers and beat."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.integration.procs import (
    BeatFactory,
    CeleryProcess,
    RedisServer,
    WorkerFactory,
    client_app,
    demo_env,
    start_celery,
    transport_options,
    wait_for,
    wait_until_pinged,
)

if shutil.which("redis-server") is None:
    # Never skip a tier for want of a dependency: `make test` installs it (scripts/deps.sh).
    raise RuntimeError("redis-server is not installed: run scripts/deps.sh (make deps)")


@pytest.fixture(autouse=True)
def _no_celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery prefers these variables to any app's own settings: keep the test process clean."""
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_BROKER_WRITE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running Redis of this test's own (``.url``; ``.stop()``/``.start()`` for outages)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis[bytes]]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def celery_client(redis_url: str) -> Iterator[Celery]:
    """A producer app on the test's Redis, without transport options."""
    app = client_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def celery_worker(redis_url: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Starts ``celery -A celery_demo worker -n <name>@integration *args`` and waits for its ping.

    ``env`` adds to the worker's environment (transport options, ...). Every worker still running
    at teardown gets SIGTERM, and is killed if it has not exited within the bound.
    """
    started: list[CeleryProcess] = []
    apps: list[Celery] = []

    def start(
        *args: str, name: str = "worker", env: Mapping[str, str] = {}, probes: bool = False
    ) -> CeleryProcess:
        node = f"{name}@integration"
        full_env = demo_env(redis_url, env)
        worker = start_celery(
            ["worker", "-n", node, "--loglevel=INFO", *args],
            full_env,
            tmp_path / f"{name}.log",
            probes=probes,
        )
        worker.node = node
        started.append(worker)
        app = client_app(redis_url, transport_options(full_env))
        apps.append(app)
        wait_until_pinged(worker, app)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for app in apps:
        app.close()


@pytest.fixture
def celery_beat(redis_url: str, tmp_path: Path) -> Iterator[BeatFactory]:
    """Starts ``celery -A celery_demo beat`` with its schedule file in the test's directory.

    Beat answers no ping: it counts as started once it logs that it is starting.
    """
    started: list[CeleryProcess] = []

    def start(*args: str, env: Mapping[str, str] = {}, probes: bool = False) -> CeleryProcess:
        beat = start_celery(
            ["beat", "-s", str(tmp_path / "schedule"), "--pidfile=", "--loglevel=INFO", *args],
            demo_env(redis_url, env),
            tmp_path / "beat.log",
            probes=probes,
        )
        started.append(beat)

        def starting() -> bool:
            beat.assert_running()
            return "beat: Starting" in beat.log_tail(200)

        wait_for(starting, timeout=30, message=f"beat did not start:\n{beat.log_tail()}")
        return beat

    yield start
    for beat in started:
        beat.stop()
