"""A real RabbitMQ for the integration tier: Debian's ``rabbitmq-server`` 3.10 (Erlang 25) with
the management plugin, private in everything, and demo-app workers on it.

A :class:`RabbitServer` has its own AMQP, management, Erlang distribution and ``epmd`` ports (all
on the loopback), its own node name and cookie, its own config, data and log directories, and
its own ``epmd``, started and stopped by PID (``ERL_EPMD_PORT``: it never meets a system epmd).
No systemd, nothing under ``/etc/rabbitmq`` or ``/var/lib/rabbitmq`` is read or written
(``RABBITMQ_CONF_ENV_FILE`` points at an empty file of its own).

Users, vhosts and permissions are definitions loaded at boot (``load_definitions``): one file,
no CLI call. The alternative, creating them with ``rabbitmqctl`` after boot, costs about 0.3 s
per call (the CLI is an Erlang VM of its own), five calls here. ``rabbitmqctl`` is still
:meth:`RabbitServer.ctl`, the tests' reference for queue counts.

Measured on the CI machine (``tests/bench/bench_rabbitmq.py``): a fresh node answers in about
5 s (first boot, empty database, warm file cache; 16 s once with a cold cache), a restart in
4.5 s; so a test module shares one server among the tests that do not need their own. A
graceful stop takes about 7.5 s; tests do not need one, so :meth:`RabbitServer.stop` kills the
node (a crash, from which the next start recovers).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from tests.integration.certs import make_certificates
from tests.integration.procs import (
    APP_DIR,
    HOST,
    CeleryProcess,
    demo_env,
    free_port,
    log_tail,
    stop_process,
    wait_for,
)

RABBITMQ_BIN: Final = Path("/usr/lib/rabbitmq/bin")
"""Debian's scripts, called directly: ``/usr/sbin``'s wrappers switch to the rabbitmq user and
write logs under ``/var/log/rabbitmq``."""
SERVER: Final = RABBITMQ_BIN / "rabbitmq-server"
CTL: Final = RABBITMQ_BIN / "rabbitmqctl"

if not SERVER.exists() or shutil.which("epmd") is None:
    # Never skip a tier for want of a dependency: `make test` installs it (scripts/deps.sh).
    raise RuntimeError("rabbitmq-server is not installed: run scripts/deps.sh (make deps)")

START_TIMEOUT: Final = 60.0
"""Seconds a start may take: measured 5 s warm, 16 s with a cold file cache."""
CTL_TIMEOUT: Final = 30.0
USER: Final = "celery-operator-test"
TEST_VHOST: Final = "celery/tests"
"""A second vhost, with a ``/`` in its name, which URLs must percent-encode (``%2F``)."""
MONITOR_USER: Final = "monitor-without-vhost"
"""A user with the monitoring tag and no permission on any vhost."""

APP_MODULE: Final = "celery_demo_rabbit"
"""The demo app with extra Celery settings (see :func:`write_app_module`)."""
EXTRA_SETTINGS_ENV: Final = "CELERY_DEMO_EXTRA_SETTINGS"
APP_SOURCE: Final = f'''"""The demo app, plus the Celery settings in ${EXTRA_SETTINGS_ENV}."""
import json
import os

from celery_demo import app

app.conf.update(json.loads(os.environ.get("{EXTRA_SETTINGS_ENV}") or "{{}}"))
'''
"""Settings such as ``task_default_queue_type`` that the demo app does not read from the
environment; they must be set before the worker builds its queues, hence an app module of its
own instead of ``--include``."""


class RabbitServer:
    """A private RabbitMQ node (see the module docstring).

    ``stop()`` and ``start()`` may be called within a test for an outage: the ports, the data
    and the definitions stay, so clients reconnect to the restarted node, whose durable queues
    and their persistent messages are still there. ``pause()``/``resume()`` freeze it instead:
    the kernel accepts connections, nothing answers.
    """

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.workdir = workdir
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.amqps_port = free_port() if tls else None
        self.management_tls_port = free_port() if tls else None
        self.node = f"celery-op-test-{self.amqp_port}@localhost"
        self.username = USER
        self.password = f"pw/{secrets.token_hex(6)}@:{secrets.token_hex(6)}"
        """With characters that URLs must percent-encode, as production passwords have."""
        self.monitor_password = secrets.token_hex(12)
        self.cookie = secrets.token_hex(16)
        self.home = workdir / "home"
        """``HOME`` of the node and of rabbitmqctl: where both find the cookie."""
        self.log = workdir / "server.log"
        self.node_log = workdir / "log" / f"{self.node}.log"
        self.tls = make_certificates(workdir / "tls", "rabbitmq") if tls else None
        self.start_seconds: float | None = None
        """How long the last start took, to the management API answering."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._children: set[int] = set()

    # --- addresses -----------------------------------------------------------------------------

    def amqp_url(self, vhost: str = "/", *, tls: bool = False) -> str:
        """The broker URL for Celery, with this server's test user (password percent-encoded)."""
        login = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        if tls:
            assert self.amqps_port is not None, "started without tls=True"
            return f"amqps://{login}@{HOST}:{self.amqps_port}/{quote(vhost, safe='')}"
        return f"amqp://{login}@{HOST}:{self.amqp_port}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        return f"http://{HOST}:{self.management_port}"

    @property
    def management_tls_url(self) -> str:
        assert self.management_tls_port is not None, "started without tls=True"
        return f"https://{HOST}:{self.management_tls_port}"

    @property
    def credentials(self) -> tuple[str, str]:
        return self.username, self.password

    @property
    def node_pid(self) -> int:
        """The PID of the Erlang VM (``beam.smp``) under the start script, for CPU figures."""
        assert self._proc is not None, "not started"
        for pid in sorted(_descendants(self._proc.pid)):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                    return pid
        raise AssertionError(f"no beam.smp under rabbitmq-server {self.node}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        started = time.monotonic()
        if not self.home.exists():
            self._write_files()
        self._start_epmd()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(SERVER)],
                env=self._env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            self._answers,
            timeout=START_TIMEOUT,
            interval=0.1,
            message=f"rabbitmq-server {self.node} did not answer:\n{self._log_tails()}",
        )
        self._children = _descendants(self._proc.pid)
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Kill the node and every process it started (see the module docstring); epmd stays
        for the next start."""
        if self._proc is None:
            return
        self._children |= _descendants(self._proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)
        for pid in self._children:  # erl_child_setup, inet_gethost: process groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The script's shell exits first; the node's sockets close when the node has exited.
        wait_for(
            lambda: not any(_alive(pid) for pid in self._children),
            timeout=10,
            message=f"rabbitmq-server {self.node} outlived SIGKILL",
        )
        self._children.clear()
        self._proc = None

    def close(self) -> None:
        """Stop the node and its epmd: nothing of this server is left running."""
        self.stop()
        if self._epmd is not None:
            stop_process(self._epmd, timeout=5)
            self._epmd = None

    def pause(self) -> None:
        """SIGSTOP to the node: connections are accepted by the kernel, nothing answers."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self._proc is not None
            os.killpg(self._proc.pid, signal.SIGCONT)

    # --- the CLI -------------------------------------------------------------------------------

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <node> *args`` (quiet), its output; fails with its error text."""
        env = self._env()
        port = str(free_port())  # the CLI is a distributed Erlang node of its own, too
        env.update(
            RABBITMQ_CTL_DIST_PORT_MIN=port,
            RABBITMQ_CTL_DIST_PORT_MAX=port,
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        done = subprocess.run(
            [str(CTL), "-n", self.node, "-q", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def queue_info(self, *fields: str, vhost: str = "/") -> list[dict[str, Any]]:
        """``rabbitmqctl list_queues -p <vhost> *fields`` as JSON rows."""
        out = self.ctl("list_queues", "-p", vhost, "--formatter", "json", *fields)
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    def list_queues(self, vhost: str = "/") -> dict[str, tuple[int, int, int]]:
        """``rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers``:
        (ready, unacknowledged, consumers) by queue name, as Celery's monitoring guide reads
        them. A queue whose counts are not known yet (a quorum queue right after its declare)
        is left out."""
        counts = ("messages_ready", "messages_unacknowledged", "consumers")
        return {
            row["name"]: (row["messages_ready"], row["messages_unacknowledged"], row["consumers"])
            for row in self.queue_info("name", *counts, vhost=vhost)
            if all(isinstance(row.get(k), int) for k in counts)
        }

    # --- internals -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """The node's environment: nothing inherited but PATH, everything of its own."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_files(self) -> None:
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        definitions = self.workdir / "definitions.json"
        definitions.write_text(json.dumps(self._definitions(), indent=2))
        lines = [
            f"listeners.tcp.default = {HOST}:{self.amqp_port}",
            f"management.tcp.ip = {HOST}",
            f"management.tcp.port = {self.management_port}",
            f"load_definitions = {definitions}",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.tls is not None:
            tls = self.tls
            lines += [
                f"listeners.ssl.default = {HOST}:{self.amqps_port}",
                f"ssl_options.cacertfile = {tls.ca_file}",
                f"ssl_options.certfile = {tls.cert_file}",
                f"ssl_options.keyfile = {tls.key_file}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
                f"management.ssl.ip = {HOST}",
                f"management.ssl.port = {self.management_tls_port}",
                f"management.ssl.cacertfile = {tls.ca_file}",
                f"management.ssl.certfile = {tls.cert_file}",
                f"management.ssl.keyfile = {tls.key_file}",
            ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _definitions(self) -> dict[str, object]:
        vhosts = ["/", TEST_VHOST]
        return {
            "users": [
                {"name": self.username, "password": self.password, "tags": ["administrator"]},
                {"name": MONITOR_USER, "password": self.monitor_password, "tags": ["monitoring"]},
            ],
            "vhosts": [{"name": vhost} for vhost in vhosts],
            "permissions": [
                {"user": self.username, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
                for v in vhosts
            ],
        }

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        with (self.workdir / "epmd.log").open("ab") as log:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", HOST],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: _listens(self.epmd_port),
            timeout=10,
            message=f"epmd on port {self.epmd_port} did not start:\n"
            + log_tail(self.workdir / "epmd.log"),
        )

    def _answers(self) -> bool:
        """The management API lists the vhosts with our user: AMQP listens, definitions are in."""
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited early:\n{self._log_tails()}")
        if not _listens(self.amqp_port):
            return False
        connection = http.client.HTTPConnection(HOST, self.management_port, timeout=2)
        login = b64encode(f"{self.username}:{self.password}".encode()).decode()
        try:
            connection.request("GET", "/api/vhosts", headers={"Authorization": f"Basic {login}"})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()
        return response.status == 200 and TEST_VHOST in {v["name"] for v in json.loads(body)}

    def _log_tails(self) -> str:
        return f"{log_tail(self.log)}\n--- {self.node_log.name}:\n{log_tail(self.node_log)}"


def _listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: its parent, init, has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc), whatever their process group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# --- demo-app workers on RabbitMQ ------------------------------------------------------------


def write_app_module(directory: Path) -> Path:
    """Write the :data:`APP_MODULE` app module into ``directory`` (once) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return directory


def rabbit_env(
    broker_url: str, app_dir: Path, settings: Mapping[str, object] = {}
) -> dict[str, str]:
    """A demo-app process's environment on RabbitMQ: no result backend (Celery 5 has no amqp
    one; the tests need no results), ``settings`` in :data:`EXTRA_SETTINGS_ENV`."""
    env = demo_env(broker_url, {"CELERY_RESULT_BACKEND": "disabled"})
    env["PYTHONPATH"] = f"{APP_DIR}{os.pathsep}{app_dir}"
    env[EXTRA_SETTINGS_ENV] = json.dumps(dict(settings))
    return env


def start_worker(
    broker_url: str,
    app_dir: Path,
    node: str,
    log: Path,
    *args: str,
    settings: Mapping[str, object] = {},
) -> CeleryProcess:
    """``celery -A celery_demo_rabbit worker -n <node> *args`` with ``settings``; returns at
    once (wait with :func:`tests.integration.procs.wait_until_pinged`)."""
    command = [
        sys.executable, "-m", "celery", "-A", APP_MODULE, "worker",
        "-n", node, "--loglevel=INFO", *args,
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            env=rabbit_env(broker_url, app_dir, settings),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return CeleryProcess(proc, log, node=node, args=list(command[3:]))


def kill_worker(worker: CeleryProcess) -> None:
    """Cold stop: SIGQUIT (no warm shutdown waiting for long tasks), then SIGKILL. With late
    acks the messages it held go back to their queue when its connection closes."""
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGQUIT)
    stop_process(worker.proc, timeout=10)


def client_settings(settings: Mapping[str, object]) -> dict[str, object]:
    """A producer's Celery settings that match a worker's ``settings`` (queue arguments)."""
    keys: Sequence[str] = (
        "task_default_queue",
        "task_default_queue_type",
        "task_queue_max_priority",
        "task_default_priority",
    )
    return {key: settings[key] for key in keys if key in settings}
