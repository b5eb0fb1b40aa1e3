"""The operator's shared broker (:class:`celery_operator.brokers.Broker`) on Redis over TLS and
behind Sentinel, against real servers (:mod:`tests.integration.redis_servers`) and real demo-app
workers: backlog reads, polls and the census, a wrong CA that fails fast and clearly, and a
Sentinel failover that the reads and the census survive."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from celery import Celery

from celery_operator.broker import BrokerUnavailable
from celery_operator.brokers import Broker, BrokerKey
from celery_operator.queues import KeyScheme
from celery_operator.remote import WorkersUnreachable
from tests.integration.procs import (
    CeleryProcess,
    demo_env,
    start_celery,
    wait_for,
    wait_until_pinged,
)
from tests.integration.redis_servers import (
    SentinelGroup,
    TlsRedis,
    make_sentinel_group,
    make_tls_redis,
)

TIMEOUT: Final = 1.0
PASSWORD: Final = "s3cr/et@pa#ss"


def _broker(url: str, **extra: object) -> Broker:
    key = BrokerKey.of(url, KeyScheme(), **extra)  # type: ignore[arg-type]
    return Broker(key, timeout=TIMEOUT, census_timeout=TIMEOUT)


def _client(url: str, options: Mapping[str, object] = {}) -> Celery:
    app = Celery("tls-sentinel-client", broker=url, backend="disabled", set_as_current=False)
    app.conf.update(broker_transport_options=dict(options), broker_connection_retry_on_startup=True)
    return app


@contextlib.contextmanager
def _worker(
    url: str, tmp_path: Path, name: str, options: Mapping[str, object] = {}
) -> Iterator[CeleryProcess]:
    env = demo_env(url, {"CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(options)})
    node = f"{name}@integration"
    worker = start_celery(
        ["worker", "-n", node, "-Q", "work", "-c", "1", "--loglevel=INFO"],
        env,
        tmp_path / f"{name}.log",
    )
    worker.node = node
    app = _client(url, options)
    try:
        wait_until_pinged(worker, app)
        yield worker
    finally:
        app.close()
        worker.stop()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    with make_tls_redis(tmp_path / "tls-redis", password=PASSWORD) as server:
        yield server


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    with make_sentinel_group(tmp_path / "sentinel", password=PASSWORD) as group:
        yield group


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_redis_with_the_ca_from_the_secret_counts_and_asks_the_workers(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """The operator verifies the server with the CA bundle (PEM text, as caSecretRef gives it)
    even though the URL names a CA path only the pods have; the census reaches a worker over
    the same TLS broker."""
    ca = tls_redis.ca_file.read_text()
    pods_url = f"{tls_redis.url_without_ca}&ssl_ca_certs=/etc/celery-operator/broker-ca/ca.crt"
    tls_redis.client().lpush("work", *[b"{}"] * 3)
    shared = _broker(pods_url, ca_data=ca)
    try:
        assert shared.read_loads(["work"])["work"].waiting == 3
        with _worker(tls_redis.url, tmp_path, "tls") as worker:
            replies = shared.census([worker.node])
            assert list(replies) == [worker.node]
            assert replies[worker.node].slots == 1
    finally:
        shared.close()


def test_tls_redis_with_a_wrong_ca_is_unavailable_at_once_and_says_why(
    tls_redis: TlsRedis,
) -> None:
    wrong = _broker(tls_redis.url_without_ca, ca_data=tls_redis.wrong_ca_file.read_text())
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as raised:
            wrong.read_loads(["work"])
        took = time.monotonic() - started
        assert "certificate verify failed" in str(raised.value)
        assert PASSWORD not in str(raised.value)
        assert "et@pa" not in str(raised.value)
        assert took < 4 * TIMEOUT, f"a refused certificate took {took:.1f}s to say so"
        with pytest.raises(WorkersUnreachable) as unreachable:
            wrong.census(["nobody@integration"])
        assert PASSWORD not in str(unreachable.value)
    finally:
        wrong.close()


def test_tls_redis_without_a_ca_uses_the_systems_and_refuses_a_private_one(
    tls_redis: TlsRedis,
) -> None:
    shared = _broker(tls_redis.url_without_ca)
    try:
        with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
            shared.read_loads(["work"])
    finally:
        shared.close()


# --- Sentinel ------------------------------------------------------------------------------------


def test_sentinel_reads_and_census_survive_a_failover(
    sentinels: SentinelGroup, tmp_path: Path
) -> None:
    options = sentinels.transport_options
    shared = _broker(sentinels.url, master_name=sentinels.master_name)
    cluster = ("ns", "sentinel")
    try:
        assert shared.kind == "redis-sentinel"
        sentinels.master.client().lpush("waiting", *[b"{}"] * 4)
        shared.watch(cluster, ["waiting"], 0.2, lambda: None)

        def counted(expected: int) -> bool:
            reading = shared.backlog()
            return bool(reading and reading.counts == {"waiting": expected})

        wait_for(
            lambda: counted(4),
            timeout=10,
            message=f"the poll never counted 4 through the sentinels: {shared.backlog()}",
        )
        with _worker(sentinels.url, tmp_path, "sentinel", options) as worker:
            assert list(shared.census([worker.node])) == [worker.node]
            took = sentinels.failover()
            # The replica had the list; one more message lands on the new master.
            sentinels.master.client().lpush("waiting", b"{}")
            wait_for(
                lambda: counted(5),
                timeout=30,
                message=f"the poll never read the new master ({took:.1f}s failover): "
                f"{shared.backlog()}",
            )
            assert shared.read_loads(["waiting"])["waiting"].waiting == 5

            def answered() -> bool:
                try:
                    return list(shared.census([worker.node])) == [worker.node]
                except WorkersUnreachable:
                    return False

            wait_for(
                answered,
                timeout=60,
                interval=0.5,
                message=f"the worker never answered after the failover:\n{worker.log_tail()}",
            )
    finally:
        shared.release(cluster)
        shared.close()
    assert shared.threads == 0
