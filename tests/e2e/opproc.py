"""The operator as a process of its own, and what it holds: for benchmarks and lifecycle tests.

``KopfRunner`` runs the operator inside the test process, where its CPU, threads and sockets
cannot be told apart from the test's. ``OperatorProcess`` starts ``python -m celery_operator``
instead, watching one namespace, with its liveness and ``/metrics`` ports on free loopback ports
and its log in a file; everything below reads that process from the outside.

Measurements (plain functions of a PID, a port or a client):

``CpuWindow``
    user + system CPU of the process over a window (``/proc/PID/stat``), as a % of one core,
    next to the whole machine's busy CPU over the same window (``/proc/stat``): on a shared
    machine that says how noisy the figure is.
``pod_cpu_seconds(uid)``
    the CPU a pod's containers have used, from its cgroup.
``rss_mib(pid)``, ``threads(pid)``
    ``VmRSS`` and ``Threads`` of ``/proc/PID/status``.
``tcp_connections(pid, port)``, ``broker_connections(broker, pid, port)``
    The process's established TCP connections to a port (its socket inodes in ``/proc/PID/fd``
    found in ``/proc/PID/net/tcp``); and the Redis clients (``CLIENT LIST``) whose address is one
    of them, so that the workers and the test's own client on the same server are not counted.
``broker_consumers(broker, pid, port)``
    the other clients waiting in ``BRPOP``: workers that have booted and consume.
``metric_series(port, prefix)``, ``metric_total(port, name, prefix)``
    ``/metrics`` sample lines whose ``cluster`` label starts with ``prefix``, by metric name;
    the sum of one metric's samples.
``Holdings`` / ``holdings(...)``, ``settle(...)``
    threads, RSS, broker connections and series at one moment; polling them until they stop
    changing (or reach a target).
``python_threads(pid)``, ``profile(pid, seconds)``
    with ``py-spy`` in the venv (else None): the process's Python threads by name; where it
    spends its CPU, by thread, by function (self) and by function with its callees (inclusive).
``phases(...)``, ``ready_pods(...)``
    what a fleet of CeleryClusters shows: each one's ``status.phase``, the Ready worker pods.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import redis
from kubernetes import client

from celery_operator import GROUP, PLURAL, VERSION, naming

ROOT: Final = Path(__file__).resolve().parents[2]
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
ESTABLISHED: Final = "01"
"""``st`` of an established connection in ``/proc/net/tcp``."""
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    """``python -m celery_operator --namespace NS``, stopped on exit (SIGTERM, then SIGKILL)."""

    namespace: str
    kubeconfig: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """``CELERY_OPERATOR_*`` settings on top of the defaults (and of this process's env)."""
    source: Path | None = None
    """A directory holding a ``celery_operator`` package to run instead of the installed one
    (``operator_under_test``)."""
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    args: Sequence[str] = ()
    """More command-line arguments (``--leader-elect``, ``-v``)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "operator not started"
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "CELERY_OPERATOR_METRICS_PORT": str(self.metrics_port),
            **self.env,
        }
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.source), os.environ.get("PYTHONPATH")) if p
            )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery_operator", "--namespace", self.namespace,
                 "--liveness-port", str(self.liveness_port), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.live():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator not live after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def live(self) -> bool:
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (Kopf runs its cleanup), SIGKILL after ``timeout``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def tracebacks(self) -> int:
        return self.log_text().count("Traceback (most recent call last)")

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- CPU ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (its threads included, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # without guest time, which user time already holds
    return total - idle, total


@dataclass(frozen=True)
class CpuFigure:
    seconds: float
    """Wall time of the window."""
    percent_of_core: float
    """The process's CPU over the window, in % of one core."""
    machine_busy_cores: float
    """Cores the whole machine kept busy on average over the window (this process included)."""


class CpuWindow:
    """``with CpuWindow(pid) as window: ...``; then ``window.figure``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.figure: CpuFigure | None = None

    def __enter__(self) -> CpuWindow:
        self._cpu = cpu_seconds(self.pid)
        self._machine = machine_ticks()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._wall
        used = cpu_seconds(self.pid) - self._cpu
        busy, total = machine_ticks()
        cores = os.cpu_count() or 1
        share = (busy - self._machine[0]) / max(1, total - self._machine[1])
        self.figure = CpuFigure(wall, 100 * used / wall, share * cores)


def measure_cpu(pid: int, seconds: float) -> CpuFigure:
    with CpuWindow(pid) as window:
        time.sleep(seconds)
    assert window.figure is not None
    return window.figure


def pod_cpu_seconds(uid: str) -> float | None:
    """CPU a pod's containers have used, from its cgroup (the kubelet's cgroupfs layout, v1 or
    v2: ``…/kubepods[/<qos>]/pod<uid>``); None where it is not found."""
    for pattern in (f"cpuacct/*/kubepods/*/pod{uid}", f"cpuacct/*/kubepods/pod{uid}"):
        for path in Path("/sys/fs/cgroup").glob(pattern):
            return int((path / "cpuacct.usage").read_text()) / 1e9
    for pattern in (f"*/kubepods/*/pod{uid}", f"*/kubepods/pod{uid}", f"kubepods/*/pod{uid}"):
        for path in Path("/sys/fs/cgroup").glob(pattern):
            stat = (path / "cpu.stat").read_text().split()
            return int(stat[stat.index("usage_usec") + 1]) / 1e6
    return None


# --- memory and threads -------------------------------------------------------------------------


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return _status_field(pid, "VmRSS") / 1024


def threads(pid: int) -> int:
    return _status_field(pid, "Threads")


# --- sockets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpConnection:
    local_port: int
    remote_host: str
    remote_port: int


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1A0B`` (or the 32-digit IPv6 form) as (host, port); each 32-bit word of the
    address is in the machine's byte order."""
    host_hex, port_hex = hex_address.split(":")
    raw = b"".join(
        struct.pack("=I", int(host_hex[i : i + 8], 16)) for i in range(0, len(host_hex), 8)
    )
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def tcp_connections(pid: int, remote_port: int | None = None) -> list[TcpConnection]:
    """The process's established TCP connections (to ``remote_port`` only, if given)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # an fd closed while we look
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: list[TcpConnection] = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            columns = line.split()
            if columns[3] != ESTABLISHED or columns[9] not in inodes:
                continue
            _, local_port = _address(columns[1])
            remote_host, port = _address(columns[2])
            if remote_port is None or port == remote_port:
                found.append(TcpConnection(local_port, remote_host, port))
    return found


def broker_clients(broker: redis.Redis[bytes], pid: int, broker_port: int) -> list[dict[str, Any]]:
    """The entries of ``CLIENT LIST`` on the Redis server at ``broker_port`` that belong to the
    process ``pid``: pods with hostNetwork and this process share the loopback, so a client's
    ``addr`` port names the socket."""
    ours = {c.local_port for c in tcp_connections(pid, broker_port)}
    listed: list[dict[str, Any]] = broker.client_list()
    return [c for c in listed if int(str(c["addr"]).rsplit(":", 1)[1]) in ours]


def broker_connections(broker: redis.Redis[bytes], pid: int, broker_port: int) -> int:
    return len(broker_clients(broker, pid, broker_port))


def broker_consumers(broker: redis.Redis[bytes], pid: int, broker_port: int) -> int:
    """Clients of the server, not of process ``pid``, whose last command was ``BRPOP``: kombu's
    Redis consumers waiting for a task, one per worker that has booted and consumes."""
    ours = {c.local_port for c in tcp_connections(pid, broker_port)}
    return sum(
        1
        for c in broker.client_list()
        if c.get("cmd") == "brpop" and int(str(c["addr"]).rsplit(":", 1)[1]) not in ours
    )


# --- /metrics -----------------------------------------------------------------------------------


def metric_samples(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def metric_series(port: int, cluster_prefix: str) -> Counter[str]:
    """Series whose ``cluster`` label starts with ``cluster_prefix``, counted by metric name."""
    label = re.compile(rf'[{{,]cluster="{re.escape(cluster_prefix)}')
    samples = [line for line in metric_samples(port) if label.search(line)]
    return Counter(re.split(r"[{ ]", line, maxsplit=1)[0] for line in samples)


def metric_total(port: int, name: str, cluster_prefix: str) -> float:
    """The sum of metric ``name``'s samples whose ``cluster`` label starts with the prefix."""
    label = re.compile(rf'[{{,]cluster="{re.escape(cluster_prefix)}')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metric_samples(port)
        if re.split(r"[{ ]", line, maxsplit=1)[0] == name and label.search(line)
    )


# --- what the operator holds at one moment ------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    threads: int
    rss_mib: float
    broker_connections: int
    api_connections: int
    """TCP connections to the Kubernetes API server."""
    series: int
    series_by_name: Mapping[str, int] = field(compare=False)
    broker_commands: Mapping[str, int] = field(compare=False)
    """The operator's broker connections by the last command each ran (``brpop``,
    ``psubscribe``…): which part of the operator holds them."""

    def key(self) -> tuple[int, int, int]:
        """What must come back to the baseline (RSS is not: Python keeps what it allocated)."""
        return self.threads, self.broker_connections, self.series


def api_server_port(kubeconfig: str) -> int:
    text = Path(kubeconfig).read_text()
    found = re.search(r"server:\s*https?://[^\s:/]+:(\d+)", text)
    return int(found.group(1)) if found else 443


def holdings(
    operator: OperatorProcess, broker: redis.Redis[bytes], broker_port: int, cluster_prefix: str
) -> Holdings:
    """Threads are read before ``/metrics`` is scraped: its HTTP server answers each request in a
    thread of its own."""
    pid = operator.pid
    count = threads(pid)
    rss = rss_mib(pid)
    conns = Counter(str(c.get("cmd", "?")) for c in broker_clients(broker, pid, broker_port))
    api = len(tcp_connections(pid, api_server_port(operator.kubeconfig)))
    series = metric_series(operator.metrics_port, cluster_prefix)
    return Holdings(
        count, rss, sum(conns.values()), api, sum(series.values()), dict(series), dict(conns)
    )


def settle(
    read: Callable[[], T],
    key: Callable[[T], object],
    *,
    at_least: float,
    stable_for: float,
    timeout: float,
    done: Callable[[T], bool] = lambda _: False,
    interval: float = 1.0,
) -> tuple[T, float]:
    """Poll ``read`` every ``interval`` s; from ``at_least`` s on, return once ``done`` holds or
    ``key`` has not changed for ``stable_for`` s; at ``timeout`` return the last reading. Returns
    (reading, seconds waited)."""
    started = time.monotonic()
    value = read()
    since, last = started, key(value)
    while True:
        now = time.monotonic()
        if now - started >= at_least and (done(value) or now - since >= stable_for):
            return value, now - started
        if now - started >= timeout:
            return value, now - started
        time.sleep(interval)
        value = read()
        if key(value) != last:
            since, last = time.monotonic(), key(value)


# --- where the CPU goes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    samples: int
    """Samples of the thread holding the GIL (``py-spy --gil``): Python code running. Threads
    blocked in I/O or waiting for the GIL are left out (py-spy's own idle detection counts a
    thread in ``epoll_wait`` or a queue's ``get`` as running, which hides where the CPU goes)."""
    seconds: float
    rate: int
    by_thread: Counter[str]
    self_samples: Counter[str]
    inclusive: Counter[str]


def py_spy() -> Path | None:
    found = Path(sys.executable).parent / "py-spy"
    return found if found.exists() else None


def python_threads(pid: int) -> Counter[str] | None:
    """The process's Python threads by name, numbers folded (``events ns/bench-N``,
    ``asyncio_N``), from ``py-spy dump``; None without py-spy."""
    tool = py_spy()
    if tool is None:
        return None
    done = subprocess.run(
        [str(tool), "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    names = re.findall(r'^Thread \S+ \([^)]*\): "([^"]+)"', done.stdout, re.MULTILINE)
    return Counter(_fold(name) for name in names)


def _fold(thread: str) -> str:
    """``asyncio_3`` -> ``asyncio_N``, ``events ns/bench-017`` -> ``events ns/bench-N``: the
    numbers that tell alike threads apart, not those inside a name (``e2e-…-69ec6f``)."""
    return re.sub(r"(?<=[_\-/ ])\d+(?=$|[ _])", "N", thread)


def _frame(frame: str) -> str:
    """``fn (file.py:12)`` without the line, so a function's samples add up."""
    return re.sub(r":\d+\)$", ")", frame)


def profile(pid: int, seconds: float, rate: int = 100) -> Profile | None:
    """Sample the process with ``py-spy record --gil --nonblocking`` (it is not paused); None
    without py-spy. Thread names lose their numbers (``asyncio_N``) so alike threads add up."""
    tool = py_spy()
    if tool is None:
        return None
    out = Path(f"/tmp/py-spy-{pid}-{time.monotonic_ns()}.txt")
    done = subprocess.run(
        [str(tool), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking",
         "--threads", "--gil"],
        capture_output=True, text=True, check=False, timeout=seconds + 60,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr[-2000:]}")
    by_thread: Counter[str] = Counter()
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        head, *frames = stack.split(";")
        thread = _fold(head.split(": ", 1)[-1])
        by_thread[thread] += count
        if frames:
            self_samples[_frame(frames[-1])] += count
        for frame in {_frame(f) for f in frames}:
            inclusive[frame] += count
    out.unlink()
    return Profile(sum(by_thread.values()), seconds, rate, by_thread, self_samples, inclusive)


# --- the CeleryClusters and their pods ----------------------------------------------------------


def phases(api_client: client.ApiClient, namespace: str) -> dict[str, str]:
    """``status.phase`` of every CeleryCluster in the namespace ("" while it has none)."""
    listed: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )
    return {
        item["metadata"]["name"]: str((item.get("status") or {}).get("phase", ""))
        for item in listed["items"]
    }


def worker_pods(api_client: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    managed = f"{naming.MANAGED_BY_LABEL}={naming.MANAGER}"
    selector = f"{managed},{naming.COMPONENT_LABEL}={naming.WORKER}"
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector)
    return list(pods.items)


def is_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def ready_pods(api_client: client.ApiClient, namespace: str) -> int:
    return sum(1 for pod in worker_pods(api_client, namespace) if is_ready(pod))


def say(line: str = "") -> None:
    """Print past pytest's capture (and KopfRunner's swap of ``sys.stdout``)."""
    print(line, file=sys.__stdout__, flush=True)


def operator_under_test(into: Path) -> tuple[Path | None, str]:
    """The operator code to run, and how to name it in figures: with ``$E2E_OPERATOR_AT`` set
    to a commit, that commit's ``operator/`` exported into ``into`` (a consistent version while
    the working tree is being edited); else the working tree (None: the installed package)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True)
        return done.stdout.decode()

    at = os.environ.get("E2E_OPERATOR_AT")
    if at:
        archive = subprocess.run(
            ["git", "archive", at, "operator"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        return into / "operator", f"{git('log', '-1', '--format=%h', at).strip()} (committed)"
    dirty = git("status", "--porcelain", "--", "operator")
    commit = git("log", "-1", "--format=%h").strip()
    return None, commit + (" + the working tree's uncommitted operator/ changes" if dirty else "")


@contextlib.contextmanager
def broker_client(url: str) -> Iterator[redis.Redis[bytes]]:
    broker: redis.Redis[bytes] = redis.Redis.from_url(url)
    try:
        yield broker
    finally:
        broker.close()
