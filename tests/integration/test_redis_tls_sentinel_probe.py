"""The broker check, and a real worker, against a TLS-only Redis and a Redis Sentinel group.

The check must trust the CA the URL or ``$CELERY_BROKER_CA_FILE`` names, refuse any other
certificate within its timeout, find the master through the sentinels, and keep finding it after
a failover; a worker of the demo app must keep running tasks across the failover.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

import pytest
from celery import Celery

from celery_probes import brokercheck as bc
from tests.integration.procs import HOST, demo_env, free_port, start_celery, wait_until_pinged
from tests.integration.redis_servers import (
    SentinelGroup,
    TlsRedis,
    make_sentinel_group,
    make_tls_redis,
    new_password,
)

TASKS: Final = "celery_demo.tasks"
RESULT_TIMEOUT: Final = 30.0
TIMEOUT: Final = 1.0
"""The check's timeout in these tests: half the default, as the operator gives liveness."""


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    with make_tls_redis(tmp_path_factory.mktemp("tls-redis"), password=new_password()) as server:
        yield server


@pytest.fixture(scope="module")
def guarded_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A Sentinel group whose sentinels want a password of their own, besides the master's.
    Shared by the module's probe tests; the one that fails it over runs last."""
    workdir = tmp_path_factory.mktemp("sentinels")
    password, sentinel_password = new_password(), f"sentinel-{new_password()}"
    with make_sentinel_group(
        workdir, password=password, sentinel_password=sentinel_password
    ) as group:
        yield group


def _options(options: Mapping[str, object]) -> dict[str, str]:
    return {bc.TRANSPORT_OPTIONS_ENV: json.dumps(dict(options))}


def _secrets_of(*passwords: str | None) -> list[str]:
    return [s for p in passwords if p for s in (p, quote(p, safe=""))]


def _no_secret_in(message: str, *passwords: str | None) -> str:
    for secret in _secrets_of(*passwords):
        assert secret not in message, message
    return message


def _where(port: int, scheme: str = "sentinel") -> str:
    return f"{scheme}://{HOST}:{port}"


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_redis_answers_with_its_ca_from_the_url_or_the_ca_file(tls_redis: TlsRedis) -> None:
    where = _where(tls_redis.port, "rediss")
    ca_file = {bc.CA_FILE_ENV: str(tls_redis.ca_file)}
    wrong_in_url = f"{tls_redis.url_without_ca}&ssl_ca_certs={tls_redis.wrong_ca_file}"
    missing = {bc.CA_FILE_ENV: str(tls_redis.ca_file.parent / "missing.crt")}
    answers = {
        "CA in the URL": bc.try_broker(tls_redis.url, TIMEOUT, environ={}),
        "CA file": bc.try_broker(tls_redis.url_without_ca, TIMEOUT, environ=ca_file),
        "the URL's CA comes first": bc.try_broker(wrong_in_url, TIMEOUT, environ=ca_file),
        "CA file missing": bc.try_broker(tls_redis.url_without_ca, TIMEOUT, environ=missing),
    }
    assert answers == {
        "CA in the URL": (True, f"{where} answered"),
        "CA file": (True, f"{where} answered"),
        "the URL's CA comes first": (
            False,
            f"{where}: TLS certificate not accepted (see ssl_ca_certs, ssl_check_hostname)",
        ),
        "CA file missing": (
            False,
            f"{where}: the CA file that $CELERY_BROKER_CA_FILE names is missing",
        ),
    }
    for _, message in answers.values():
        _no_secret_in(message, tls_redis.password)


def test_a_certificate_of_another_ca_is_refused_at_once(tls_redis: TlsRedis) -> None:
    where = _where(tls_redis.port, "rediss")
    started = time.monotonic()
    answer = bc.try_broker(
        tls_redis.url_without_ca, TIMEOUT, environ={bc.CA_FILE_ENV: str(tls_redis.wrong_ca_file)}
    )
    took = time.monotonic() - started
    assert answer == (
        False,
        f"{where}: TLS certificate not accepted (see $CELERY_BROKER_CA_FILE, ssl_check_hostname)",
    )
    assert took < TIMEOUT  # a refusal, not a timeout
    _no_secret_in(answer[1], tls_redis.password)
    # Without any CA the system's are tried, which did not sign this one either.
    assert bc.try_broker(tls_redis.url_without_ca, TIMEOUT, environ={})[1].endswith(
        "TLS certificate not accepted (see ssl_ca_certs, ssl_check_hostname)"
    )


# --- Sentinel ----------------------------------------------------------------------------------


def test_the_check_finds_the_master_through_the_sentinels(guarded_group: SentinelGroup) -> None:
    group = guarded_group
    s1, s2, s3 = (_where(port) for port in group.sentinel_ports)
    master = f"{HOST}:{group.master_port}"
    options = _options(group.transport_options)
    no_sentinel_password = _options({"master_name": group.master_name})
    wrong_password = group.url.replace(quote(group.password or "", safe=""), "wrong")
    first_gone = f"sentinel://{HOST}:{free_port()};{group.url}"
    answers = {
        "as configured": bc.try_broker(group.url, TIMEOUT, environ=options),
        "first sentinel gone": bc.try_broker(first_gone, TIMEOUT, environ=options),
        "no sentinel password": bc.try_broker(group.url, TIMEOUT, environ=no_sentinel_password),
        "wrong master password": bc.try_broker(wrong_password, TIMEOUT, environ=options),
    }
    refused = "answered WRONGPASS then NOAUTH, not PONG"
    assert answers == {
        "as configured": (True, f"{s1} answered, and so did its master {master}"),
        "first sentinel gone": (True, f"{s1} answered, and so did its master {master}"),
        "no sentinel password": (
            False,
            "; ".join(f"{s}: answered NOAUTH, not a master address" for s in (s1, s2, s3)),
        ),
        "wrong master password": (
            False,
            "; ".join(f"{s}: master {master}: {refused}" for s in (s1, s2, s3)),
        ),
    }
    for _, message in answers.values():
        _no_secret_in(message, group.password, group.sentinel_password)


def test_a_master_name_the_sentinels_do_not_know_is_said_plainly(
    guarded_group: SentinelGroup,
) -> None:
    group = guarded_group
    unknown = _options({**group.transport_options, "master_name": "not-mymaster"})
    answered, message = bc.try_broker(group.url, TIMEOUT, environ=unknown)
    assert (answered, message) == (
        False,
        "; ".join(
            f"{_where(port)}: knows no master named 'not-mymaster'"
            " (master_name in $CELERY_BROKER_TRANSPORT_OPTIONS)"
            for port in group.sentinel_ports
        ),
    )
    assert bc.try_broker(group.url, TIMEOUT, environ={}) == (
        False,
        "sentinel URLs need master_name in $CELERY_BROKER_TRANSPORT_OPTIONS",
    )


def test_after_a_failover_the_check_finds_the_new_master(
    guarded_group: SentinelGroup, tmp_path: Path
) -> None:
    """Last of the module's tests on this group: it leaves the group failed over."""
    group = guarded_group
    options = _options(group.transport_options)
    old_master = group.master_port
    seconds = group.failover()
    new_master = group.master_port
    assert new_master != old_master
    assert group.master_address() == (HOST, new_master)
    answered, message = bc.try_broker(group.url, TIMEOUT, environ=options)
    assert (answered, message) == (
        True,
        f"{_where(group.sentinel_ports[0])} answered, and so did its master {HOST}:{new_master}",
    )
    # The same through the probe's command line, as the kubelet runs it: a worker that has
    # been disconnected past the grace while the broker answers is wedged.
    state = tmp_path / "state"
    state.mkdir()
    lost = time.monotonic() - 100
    (state / "worker.json").write_text(
        json.dumps({"heartbeat": lost, "connected": False, "disconnected_at": lost})
    )
    result = subprocess.run(
        [sys.executable, "-m", "celery_probes.cli", "worker-live", "--dir", str(state)],
        env={**os.environ, "CELERY_BROKER_URL": group.url, **options},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    line = _no_secret_in(result.stdout.strip(), group.password, group.sentinel_password)
    assert result.returncode == 1, line
    assert line.endswith(f"and so did its master {HOST}:{new_master}"), line
    # The old master back, as a replica: the sentinels still name the new one.
    group.restart_old_master()
    assert bc.try_broker(group.url, TIMEOUT, environ=options) == (True, message)
    print(f"failover took {seconds:.2f} s", file=sys.__stdout__)


# --- a real worker over Sentinel ---------------------------------------------------------------


def _sentinel_client(group: SentinelGroup) -> Celery:
    """A producer app on the group: broker and result backend both need the master's name."""
    app = Celery("sentinel-client", broker=group.url, backend=group.url, set_as_current=False)
    app.conf.update(
        broker_transport_options=group.transport_options,
        result_backend_transport_options=group.transport_options,
        broker_connection_retry_on_startup=True,
    )
    return app


def test_a_worker_runs_tasks_over_sentinel_before_and_after_a_failover(tmp_path: Path) -> None:
    with make_sentinel_group(tmp_path / "sentinels", password=new_password()) as group:
        options = json.dumps(group.transport_options)
        env = demo_env(
            group.url,
            {
                "CELERY_BROKER_TRANSPORT_OPTIONS": options,
                "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": options,
            },
        )
        worker = start_celery(
            ["worker", "-n", "sentinel@integration", "--loglevel=INFO", "-c", "1"],
            env,
            tmp_path / "worker.log",
        )
        worker.node = "sentinel@integration"
        app = _sentinel_client(group)
        try:
            wait_until_pinged(worker, app)
            before = app.send_task(f"{TASKS}.add", args=(20, 22))
            assert before.get(timeout=RESULT_TIMEOUT) == 42
            assert bc.try_broker(group.url, TIMEOUT, environ=env)[0]

            group.failover()
            failed_over = time.monotonic()
            after = app.send_task(f"{TASKS}.add", args=(1, 2))
            assert after.get(timeout=RESULT_TIMEOUT) == 3, worker.log_tail()
            took = time.monotonic() - failed_over
            worker.assert_running()
            answered, message = bc.try_broker(group.url, TIMEOUT, environ=env)
            assert answered, message
            assert message.endswith(f"{HOST}:{group.master_port}")
            print(f"first task after the failover: {took:.2f} s", file=sys.__stdout__)
        finally:
            worker.stop()
            app.close()
