"""The broker check against real ``redis-server`` processes: passwords, ACL users, TLS, a server
that is stopped or frozen, failover lists; and the line a check prints never holds a credential.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import quote

import pytest
import redis

from celery_probes import brokercheck as bc
from tests.integration.certs import make_certificates
from tests.integration.procs import HOST, free_port, log_tail, stop_process, wait_for

USER: Final = "celery-app"
PASSWORD: Final = "p/ss@w#rd?50%:x"
"""Every character that must be percent-encoded in a URL's userinfo."""
USERINFO: Final = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}"
SECRETS: Final = (USER, PASSWORD, quote(PASSWORD, safe=""))


class Server:
    """A ``redis-server`` with extra arguments (TLS), on a free loopback port."""

    def __init__(self, workdir: Path, *args: str, tls: bool = False) -> None:
        self.port = free_port()
        self.log = workdir / f"redis-{self.port}.log"
        listen = (
            ["--port", "0", "--tls-port", str(self.port)] if tls else ["--port", str(self.port)]
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", *listen, "--bind", HOST, "--save", "", "--appendonly", "no",
                 "--dir", str(workdir), *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(self._listening, timeout=10, message=f"redis-server on {self.port}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{log_tail(self.log)}")
        return "Ready to accept connections" in log_tail(self.log)

    def where(self, scheme: str = "redis") -> str:
        return f"{scheme}://{HOST}:{self.port}"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Server]:
    """A Redis that wants a password for the default user and knows an ACL user, both with
    every reserved character in the password."""
    server = Server(tmp_path)
    admin = redis.Redis(host=HOST, port=server.port)
    admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    yield server
    stop_process(server.proc, timeout=10)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 that it signed, in one directory."""
    return make_certificates(tmp_path / "tls", "redis").ca_file.parent


@pytest.fixture
def tls_server(tmp_path: Path, certificates: Path) -> Iterator[Server]:
    server = Server(
        tmp_path,
        "--tls-cert-file", str(certificates / "server.crt"),
        "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.crt"),
        "--tls-auth-clients", "no",
        "--requirepass", PASSWORD,
        tls=True,
    )  # fmt: skip
    yield server
    stop_process(server.proc, timeout=10)


def _no_secret_in(message: str) -> str:
    for secret in SECRETS:
        assert secret not in message, message
    return message


def test_credentials_in_the_url_get_a_pong_and_wrong_ones_do_not(secured: Server) -> None:
    host = f"{HOST}:{secured.port}"
    answers = {
        "user and password": bc.try_broker(f"redis://{USERINFO}@{host}/0"),
        "password only": bc.try_broker(f"redis://:{quote(PASSWORD, safe='')}@{host}/3"),
        "wrong password": bc.try_broker(f"redis://{USER}:wrong-{USERINFO}@{host}/0"),
        "none": bc.try_broker(f"redis://{host}"),
    }
    assert answers == {
        "user and password": (True, f"{secured.where()} answered"),
        "password only": (True, f"{secured.where()} answered"),
        "wrong password": (False, f"{secured.where()}: answered WRONGPASS then NOAUTH, not PONG"),
        "none": (False, f"{secured.where()}: answered NOAUTH, not PONG"),
    }
    for _, message in answers.values():
        _no_secret_in(message)


def test_a_stopped_or_frozen_server_is_no_answer_within_the_timeout(secured: Server) -> None:
    url = f"redis://{USERINFO}@{HOST}:{secured.port}/0"
    secured.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = bc.try_broker(url, timeout=0.5)
        took = time.monotonic() - started
    finally:
        secured.proc.send_signal(signal.SIGCONT)
    assert answer == (False, f"{secured.where()}: no answer within 0.5s")
    assert took < 0.5 + 0.3
    stop_process(secured.proc, timeout=10)
    assert bc.try_broker(url) == (False, f"{secured.where()}: connection refused")


def test_a_failover_list_is_up_if_any_url_answers(secured: Server) -> None:
    gone = free_port()
    good = f"redis://{USERINFO}@{HOST}:{secured.port}/0"
    assert bc.try_broker(f"redis://{USERINFO}@{HOST}:{gone}/0;{good}") == (
        True,
        f"{secured.where()} answered",
    )
    answered, message = bc.try_broker(f"redis://{HOST}:{gone}/0;redis://{HOST}:{secured.port}")
    assert (answered, message) == (
        False,
        f"redis://{HOST}:{gone}: connection refused; {secured.where()}: answered NOAUTH, not PONG",
    )


def test_other_schemes_count_a_tcp_connection(secured: Server) -> None:
    assert bc.try_broker(f"sqla+postgresql://{HOST}:{secured.port}") == (
        True,
        f"sqla+postgresql://{HOST}:{secured.port} answered",
    )
    assert bc.try_broker(f"sqla+postgresql://{HOST}:{free_port()}")[0] is False


def test_rediss_verifies_the_certificate_unless_told_not_to(
    tls_server: Server, certificates: Path
) -> None:
    base = f"rediss://:{quote(PASSWORD, safe='')}@{HOST}:{tls_server.port}/0"
    where = tls_server.where("rediss")
    ca = certificates / "ca.crt"
    answers = [
        bc.try_broker(f"{base}?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
        bc.try_broker(f"{base}?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={ca}"),
        bc.try_broker(f"{base}?ssl_cert_reqs=none"),
        bc.try_broker(base),  # certificates are required by default: this CA is not the system's
        bc.try_broker(f"{base}?ssl_ca_certs={tls_server.log.parent / 'missing.crt'}"),
        bc.try_broker(f"redis://:{quote(PASSWORD, safe='')}@{HOST}:{tls_server.port}/0"),
    ]
    assert answers == [
        (True, f"{where} answered"),
        (True, f"{where} answered"),
        (True, f"{where} answered"),
        (False, f"{where}: TLS certificate not accepted (see ssl_ca_certs, ssl_check_hostname)"),
        (False, f"{where}: a file named in the URL is missing"),
        (False, f"{tls_server.where()}: connection closed before it answered"),
    ]
    for _, message in answers:
        _no_secret_in(message)


@pytest.mark.parametrize("password", [PASSWORD, "wrong"])
def test_the_check_line_never_shows_the_credentials(
    secured: Server, tmp_path: Path, password: str
) -> None:
    """``celery-probe worker-live`` as the kubelet runs it, for a worker disconnected past the
    grace: it fails when the broker takes the credentials, passes when it does not, and its
    line names only scheme, host and port."""
    state = tmp_path / "state"
    state.mkdir()
    lost = time.monotonic() - 100
    (state / "worker.json").write_text(
        json.dumps({"heartbeat": lost, "connected": False, "disconnected_at": lost})
    )
    url = f"redis://{quote(USER, safe='')}:{quote(password, safe='')}@{HOST}:{secured.port}/0"
    result = subprocess.run(
        [sys.executable, "-m", "celery_probes.cli", "worker-live", "--dir", str(state)],
        env={**os.environ, "CELERY_BROKER_URL": url},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    line = _no_secret_in(result.stdout.strip())
    if password == PASSWORD:
        assert (result.returncode, line) == (
            1,
            "FAIL: broker answers but this worker has been disconnected for 100s (grace 30s): "
            f"{secured.where()} answered",
        )
    else:
        assert (result.returncode, line) == (
            0,
            f"ok: broker unreachable from this pod too ({secured.where()}: answered WRONGPASS"
            " then NOAUTH, not PONG): waiting for it, not restarting",
        )
