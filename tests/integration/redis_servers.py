"""Real Redis servers of the integration tier beyond the plain one: TLS, and a Sentinel group.

Each process is a ``redis-server`` (or ``redis-sentinel``) on a free loopback port, with its own
directory under the test's, no persistence, no systemd, and is stopped by PID.

* :class:`TlsRedis` listens for TLS only (``--port 0``), with a certificate for 127.0.0.1 signed
  by a CA of its own (:func:`tests.integration.certs.make_certificates`), and a second, unrelated
  CA for the tests that must see a certificate refused.
* :class:`SentinelGroup` is a master, one replica and three sentinels that monitor the master as
  :data:`MASTER_NAME` (quorum 2). :meth:`SentinelGroup.failover` kills the master and waits for
  the sentinels to promote the replica.

Measured on this machine (Redis 7.0.15, several runs each): a :class:`TlsRedis` answers 0.04 s after
its start (its two CAs and the certificate take 0.08 s before). A :class:`SentinelGroup` is
ready 2.2 s after its start (2.16 to 2.23 s): the sentinels find each other through the master's
hello channel, which each writes to every 2 s. A failover, from SIGKILL to the promoted replica
taking writes and all three sentinels naming it, takes 2.3 to 3.0 s (``down-after-milliseconds``
1000, then the vote and the promotion); :meth:`SentinelGroup.restart_old_master` 1.1 to 1.2 s.
A demo-app worker runs its first task 4.8 to 4.9 s after the failover: Celery retries the
connection 2 s, then 4 s apart, and redis-py takes no master that the sentinels deem down.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import redis

from tests.integration.certs import make_certificates
from tests.integration.procs import HOST, free_port, log_tail, stop_process, wait_for

if shutil.which("redis-sentinel") is None:
    # Never skip a tier for want of a dependency: `make test` installs it (scripts/deps.sh).
    raise RuntimeError("redis-sentinel is not installed: run scripts/deps.sh (make deps)")

MASTER_NAME: Final = "mymaster"
QUORUM: Final = 2
DOWN_AFTER_MS: Final = 1000
"""How long a master may not answer before a sentinel deems it down (Redis' default: 30 s)."""
FAILOVER_TIMEOUT_MS: Final = 3000
"""Bounds a failover's steps and spaces two attempts on one master (Redis' default: 3 min)."""
START_TIMEOUT: Final = 15.0
FAILOVER_WAIT: Final = 30.0
"""Seconds :meth:`SentinelGroup.failover` waits: measured 2 to 3 s; an election that splits its
votes is retried after twice the failover timeout."""


def new_password() -> str:
    """A password with characters that URLs must percent-encode, as production ones have."""
    return f"pw/{secrets.token_hex(6)}@:{secrets.token_hex(6)}"


class RedisProcess:
    """One ``redis-server``-like process: started, waited for (PING), stopped or killed by PID."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        port: int,
        *,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.log = log
        self.port = port
        self.password = password
        self.ca_file = ca_file
        """The CA a client checks the server's certificate with: None without TLS."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, timeout: float = 5.0) -> redis.Redis[bytes]:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            ssl=self.ca_file is not None,
            ssl_ca_certs=str(self.ca_file) if self.ca_file else None,
            socket_timeout=timeout,
        )

    def start(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                self.command,
                cwd=self.log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        probe = self.client(timeout=1.0)
        try:
            wait_for(
                lambda: self._answers(probe),
                timeout=START_TIMEOUT,
                message=f"{self.command[0]} did not answer PING:\n{log_tail(self.log)}",
            )
        finally:
            probe.close()

    def stop(self) -> None:
        """SIGTERM (a Redis without persistence exits at once), SIGKILL after a bound."""
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crashed node or a lost machine: no goodbye to replicas or sentinels."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._proc = None

    def _answers(self, probe: redis.Redis[bytes]) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"{self.command[0]} exited early:\n{log_tail(self.log)}")
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False


def _server_command(port: int, workdir: Path, *args: str) -> list[str]:
    return [
        "redis-server",
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        *args,
    ]  # fmt: skip


class TlsRedis:
    """A ``redis-server`` that speaks TLS only, optionally with a password (see the module)."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_certificates(workdir / "tls", "redis")
        self.wrong_ca_file = make_certificates(workdir / "other-tls", "other").ca_file
        """A CA that signed nothing this server shows."""
        tls = [
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert_file),
            "--tls-key-file", str(self.tls.key_file),
            "--tls-ca-cert-file", str(self.tls.ca_file),
            "--tls-auth-clients", "no",  # the clients show no certificate of their own
        ]  # fmt: skip
        auth = ["--requirepass", password] if password else []
        self._process = RedisProcess(
            _server_command(0, workdir, *tls, *auth),  # --port 0: no plain TCP at all
            workdir / f"redis-tls-{self.port}.log",
            self.port,
            password=password,
            ca_file=self.tls.ca_file,
        )

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def url_without_ca(self) -> str:
        """``rediss://`` with the password and certificates required, but no CA named."""
        userinfo = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"rediss://{userinfo}{HOST}:{self.port}/0?ssl_cert_reqs=required"

    @property
    def url(self) -> str:
        """The URL as Celery and kombu read it: certificates required, checked against our CA."""
        return f"{self.url_without_ca}&ssl_ca_certs={quote(str(self.ca_file))}"

    @property
    def log(self) -> Path:
        return self._process.log

    def client(self) -> redis.Redis[bytes]:
        return self._process.client()

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._process.stop()

    def close(self) -> None:
        self.stop()


class SentinelGroup:
    """A master, a replica and three sentinels (see the module docstring).

    ``password`` is the data nodes' (``requirepass`` and ``masterauth`` on both, since either may
    be the master; the sentinels' ``auth-pass``); ``sentinel_password`` the sentinels' own
    (``requirepass`` and ``sentinel-pass`` between them), given to clients in
    ``sentinel_kwargs``. After :meth:`failover` the replica is :attr:`master` and the killed
    master is :attr:`replica`, down until :meth:`restart_old_master`.
    """

    def __init__(
        self, workdir: Path, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.sentinel_password = sentinel_password
        workdir.mkdir(parents=True, exist_ok=True)
        master_port = free_port()
        self.master = self._data_node(master_port)
        self.replica = self._data_node(free_port(), replica_of=master_port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [self._sentinel(port, master_port) for port in self.sentinel_ports]
        self.start_seconds: float | None = None
        """How long the last :meth:`start` took, to every sentinel knowing all the group."""

    # --- addresses -----------------------------------------------------------------------------

    @property
    def master_name(self) -> str:
        return MASTER_NAME

    @property
    def url(self) -> str:
        """Celery's form: every sentinel, each URL with the data nodes' password (kombu gives
        the password of the URL it uses to the master, never to the sentinels)."""
        userinfo = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{userinfo}{HOST}:{port}/0" for port in self.sentinel_ports)

    @property
    def transport_options(self) -> dict[str, object]:
        """kombu's ``broker_transport_options`` (and Celery's result backend's) for the group."""
        options: dict[str, object] = {"master_name": MASTER_NAME}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def sentinel_client(self, index: int = 0) -> redis.Redis[bytes]:
        return self.sentinels[index].client()

    def master_address(self, index: int = 0) -> tuple[str, int]:
        """The master's address as sentinel ``index`` names it."""
        client = self.sentinel_client(index)
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        finally:
            client.close()
        host, port = reply
        return host.decode(), int(port)

    @property
    def master_port(self) -> int:
        return self.master.port

    @property
    def replica_port(self) -> int:
        return self.replica.port

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every process and wait until the sentinels could fail the master over."""
        started = time.monotonic()
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(
            self._replica_in_sync,
            timeout=START_TIMEOUT,
            message=f"the replica did not sync:\n{log_tail(self.replica.log)}",
        )
        wait_for(
            self._sentinels_ready,
            timeout=START_TIMEOUT,
            interval=0.1,
            message="the sentinels did not find each other and the replica:\n"
            + log_tail(self.sentinels[0].log),
        )
        self.start_seconds = time.monotonic() - started

    def close(self) -> None:
        """Stop every process of the group."""
        for process in (*self.sentinels, self.master, self.replica):
            process.stop()

    def failover(self) -> float:
        """SIGKILL the master; return the seconds until the replica takes writes as the master
        every sentinel names. Swaps :attr:`master` and :attr:`replica`."""
        old, new = self.master, self.replica
        new_address = (HOST, new.port)
        started = time.monotonic()
        old.kill()

        def promoted() -> bool:
            if any(self._named_master(i) != new_address for i in range(len(self.sentinels))):
                return False
            client = new.client(timeout=1.0)
            try:
                return bool(client.set("celery-operator-test:failover", "done"))
            except redis.RedisError:  # READONLY until the promotion
                return False
            finally:
                client.close()

        wait_for(
            promoted,
            timeout=FAILOVER_WAIT,
            interval=0.05,
            message="the sentinels did not promote the replica:\n"
            + "\n".join(log_tail(s.log, 15) for s in self.sentinels),
        )
        self.master, self.replica = new, old
        return time.monotonic() - started

    def restart_old_master(self) -> None:
        """Start the killed master again, as a replica of the new one, and wait until the
        sentinels count it as a healthy replica (so that another failover can happen)."""
        self.replica = self._data_node(self.replica.port, replica_of=self.master_port)
        self.replica.start()
        wait_for(
            self._replica_in_sync,
            timeout=START_TIMEOUT,
            message=f"the old master did not sync:\n{log_tail(self.replica.log)}",
        )
        wait_for(
            self._sentinels_ready,
            timeout=START_TIMEOUT,
            interval=0.1,
            message="the sentinels did not see the old master back:\n"
            + log_tail(self.sentinels[0].log),
        )

    # --- internals -----------------------------------------------------------------------------

    def _data_node(self, port: int, replica_of: int | None = None) -> RedisProcess:
        args = ["--repl-diskless-sync-delay", "0"]  # Redis 7 waits 5 s for more replicas
        if replica_of is not None:
            args += ["--replicaof", HOST, str(replica_of)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        directory = self.workdir / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        return RedisProcess(
            _server_command(port, directory, *args),
            directory / "redis.log",
            port,
            password=self.password,
        )

    def _sentinel(self, port: int, master_port: int) -> RedisProcess:
        directory = self.workdir / f"sentinel-{port}"
        directory.mkdir(exist_ok=True)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {directory}",
            f"sentinel monitor {MASTER_NAME} {HOST} {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}"]
            lines += [f"sentinel sentinel-pass {self.sentinel_password}"]
        config = directory / "sentinel.conf"  # a sentinel rewrites it: one file each
        config.write_text("\n".join(lines) + "\n")
        return RedisProcess(
            ["redis-sentinel", str(config)],
            directory / "sentinel.log",
            port,
            password=self.sentinel_password,
        )

    def _named_master(self, index: int) -> tuple[str, int] | None:
        try:
            return self.master_address(index)
        except (redis.RedisError, TypeError, ValueError):
            return None

    def _replica_in_sync(self) -> bool:
        client = self.replica.client(timeout=1.0)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        """Every sentinel names the master, knows the two others and the replica, up."""
        replica = (HOST, self.replica_port)
        for sentinel in self.sentinels:
            client = sentinel.client(timeout=1.0)
            try:  # parsed by redis-py into dicts (flags as is_* booleans, numbers as int)
                master: dict[str, Any] = client.execute_command("SENTINEL MASTER", MASTER_NAME)
                replicas: list[dict[str, Any]] = client.execute_command(
                    "SENTINEL SLAVES", MASTER_NAME
                )
            except redis.RedisError:
                return False
            finally:
                client.close()
            if not master["is_master"] or master["is_sdown"] or master["is_odown"]:
                return False
            if master["port"] != self.master_port or master["num-other-sentinels"] != 2:
                return False
            healthy = {
                (r["ip"], r["port"])
                for r in replicas
                if not r["is_sdown"] and r.get("master-link-status") == "ok"
            }
            if replica not in healthy:
                return False
        return True


@contextlib.contextmanager
def make_tls_redis(workdir: Path, *, password: str | None = None) -> Iterator[TlsRedis]:
    """A started :class:`TlsRedis`, stopped at the end."""
    server = TlsRedis(workdir, password=password)
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def make_sentinel_group(
    workdir: Path, *, password: str | None = None, sentinel_password: str | None = None
) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup`, every process stopped at the end."""
    group = SentinelGroup(workdir, password=password, sentinel_password=sentinel_password)
    try:
        group.start()
        yield group
    finally:
        group.close()
