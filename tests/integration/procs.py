"""Real processes for the integration tier: ``redis-server``, ``celery worker``, ``celery beat``.

Every wait here polls a condition with a bound and fails with the process's log tail, so a test
that goes wrong says why instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, TypeVar

import redis
from celery import Celery

REPO: Final = Path(__file__).resolve().parents[2]
APP_DIR: Final = REPO / "examples" / "app"
"""Put on ``PYTHONPATH`` so that ``celery -A celery_demo`` finds the demo app, as in the image."""

HOST: Final = "127.0.0.1"
REDIS_START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 30.0
"""Seconds a process gets after SIGTERM before it is killed (a test's terminationGracePeriod)."""

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], *, timeout: float, message: str, interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout} s)")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM to the main process only (as the kubelet does), SIGKILL after ``timeout``.

    Whatever is left of its process group (pool children of a killed main process) is killed
    afterwards, so no test leaks processes into the next. Returns the main process's exit code.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence.

    ``stop()`` and ``start()`` may be called within a test to simulate a broker outage: the port
    stays the same, so clients reconnect to the restarted server (which starts empty).
    ``pause()``/``resume()`` freeze it instead: connections open but nothing answers.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log = workdir / f"redis-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)

    def start(self) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port", str(self.port),
                    "--bind", HOST,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        probe = self.client()
        try:
            wait_for(
                lambda: self._answers(probe),
                timeout=REDIS_START_TIMEOUT,
                message=f"redis-server on port {self.port} did not answer PING:\n"
                + log_tail(self.log),
            )
        finally:
            probe.close()

    def stop(self) -> None:
        if self._proc is not None:
            self.resume()
            stop_process(self._proc, timeout=10)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, the server answers nothing."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)

    def _answers(self, probe: redis.Redis[bytes]) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"redis-server exited early:\n{log_tail(self.log)}")
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False


def demo_env(broker_url: str, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment of a demo-app process: this one's, minus Celery's, plus the broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(PYTHONPATH=str(APP_DIR), CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def transport_options(env: Mapping[str, str]) -> dict[str, object]:
    raw = env.get("CELERY_BROKER_TRANSPORT_OPTIONS", "")
    options: dict[str, object] = json.loads(raw) if raw else {}
    return options


def client_app(broker_url: str, options: Mapping[str, object] = {}) -> Celery:
    """A separate producer app, as a user's web service would be: it knows tasks only by name.

    It must use the workers' transport options: with a ``global_keyprefix`` the queues, the
    results and even the remote-control (pidbox) channels are all prefixed.
    """
    app = Celery("integration-client", broker=broker_url, backend=broker_url, set_as_current=False)
    prefix = options.get("global_keyprefix")
    app.conf.update(
        broker_transport_options=dict(options),
        result_backend_transport_options={"global_keyprefix": prefix} if prefix else {},
        broker_connection_retry_on_startup=True,
    )
    return app


@dataclass
class CeleryProcess:
    """A running ``celery -A celery_demo <command>`` and where its output goes."""

    proc: subprocess.Popen[bytes]
    log: Path
    node: str = ""
    args: Sequence[str] = field(default_factory=list)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Warm shutdown: SIGTERM, wait at most ``timeout``, then kill. Returns the exit code."""
        return stop_process(self.proc, timeout)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"celery {' '.join(self.args)} exited with {self.proc.returncode}:\n"
                + self.log_tail()
            )


class WorkerFactory(Protocol):
    """The ``celery_worker`` fixture: starts a worker and returns once it answers ping."""

    def __call__(
        self, *args: str, name: str = ..., env: Mapping[str, str] = ..., probes: bool = ...
    ) -> CeleryProcess: ...


class BeatFactory(Protocol):
    """The ``celery_beat`` fixture: starts beat and returns once it is starting."""

    def __call__(
        self, *args: str, env: Mapping[str, str] = ..., probes: bool = ...
    ) -> CeleryProcess: ...


def start_celery(
    args: Sequence[str], env: Mapping[str, str], log: Path, *, probes: bool = False
) -> CeleryProcess:
    """Start ``celery -A celery_demo *args`` in its own session, output appended to ``log``.

    With ``probes`` it starts through ``celery-probe run``, as the operator's pods do.
    """
    launcher = ["celery_probes.cli", "run"] if probes else ["celery"]
    command = [sys.executable, "-m", *launcher, "-A", "celery_demo", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            env=dict(env),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return CeleryProcess(proc, log, args=list(args))


def wait_until_pinged(
    worker: CeleryProcess, app: Celery, timeout: float = 60.0
) -> dict[str, object]:
    """Poll a ping targeted at the worker's node name until it answers."""

    def answered() -> dict[str, object] | None:
        worker.assert_running()
        replies = app.control.ping(destination=[worker.node], timeout=1.0, limit=1)
        for reply in replies or []:
            if worker.node in reply:
                answer: dict[str, object] = reply[worker.node]
                return answer
        return None

    return wait_for(
        answered,
        timeout=timeout,
        interval=0.2,
        message=f"worker {worker.node} never answered ping:\n{worker.log_tail()}",
    )
