"""The broker check's pure parts: parsing Celery's broker URLs, the greetings, the answers, and
that nothing it says ever holds a credential. Against real servers: tests/integration."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from celery_probes import brokercheck as bc

USER = "celery-app"
PASSWORD = "p/ss@w#rd?50%:x"
"""Every character that must be percent-encoded in a URL's userinfo."""
ENCODED = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}"


@pytest.mark.parametrize(
    ("url", "where", "username", "password"),
    [
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380", "", ""),
        ("redis://redis.ns.svc", "redis://redis.ns.svc:6379", "", ""),
        (f"redis://:{quote(PASSWORD, safe='')}@h:1/2", "redis://h:1", "", PASSWORD),
        (f"redis://{ENCODED}@h/0", "redis://h:6379", USER, PASSWORD),
        (f"REDISS://{ENCODED}@h.example:6380/0?ssl_cert_reqs=none", "rediss://h.example:6380",
         USER, PASSWORD),
        ("redis://[::1]:7000/0", "redis://[::1]:7000", "", ""),
        (f"amqp://{ENCODED}@rabbit//", "amqp://rabbit:5672", USER, PASSWORD),
        ("amqps://rabbit/vhost", "amqps://rabbit:5671", "", ""),
        ("pyamqp://guest:guest@rabbit:5673//", "pyamqp://rabbit:5673", "guest", "guest"),
        ("sentinel://s1", "sentinel://s1:26379", "", ""),
        ("sqla+postgresql://db:5432/celery", "sqla+postgresql://db:5432", "", ""),
        (f"redis+socket://:{quote(PASSWORD, safe='')}@/run/redis.sock?virtual_host=0",
         "redis+socket:///run/redis.sock", "", PASSWORD),
    ],
)  # fmt: skip
def test_urls_parse_into_where_to_connect_and_the_decoded_credentials(
    url: str, where: str, username: str, password: str
) -> None:
    endpoint = bc.parse_url(url)
    assert endpoint.where() == where
    assert (endpoint.username.decode(), endpoint.password.decode()) == (username, password)
    assert PASSWORD not in repr(endpoint)


def test_tls_options_come_from_the_query() -> None:
    endpoint = bc.parse_url("rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem")
    assert endpoint.query == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}


def test_a_failover_list_keeps_every_url_in_order() -> None:
    endpoints = bc.parse_urls(f" redis://{ENCODED}@a:1/0 ;redis://b:2/0; ")
    assert [e.where() for e in endpoints] == ["redis://a:1", "redis://b:2"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "no broker URL in $CELERY_BROKER_URL"),
        (" ; ", "no broker URL"),
        ("127.0.0.1:6379", "the broker URL in $CELERY_BROKER_URL has no scheme"),
        ("memory://", "the broker URL (memory) has no usable host and port"),
        ("redis://h:99999/0", "has no usable host and port"),
        ("redis://h:6379x/0", "has no usable host and port"),
        ("sqla+sqlite:///celery.db", "has no usable host and port"),
        ("redis+socket://", "names no socket path"),
        # Raw reserved characters in the password: part of it would pass for a host.
        (f"redis://{USER}:{PASSWORD}@h:6379/0", "percent-encode '/', '?', '#' and '@'"),
        (f"redis://:{PASSWORD}@h/0", "percent-encode"),
        (f"redis://{USER}:12/34@h/0", "percent-encode"),
        (f"redis://{USER}:12#34@h/0", "percent-encode"),
        (f"redis://{USER}:12?34@h/0", "percent-encode"),
        ("redis://a:1/0;memory://", "broker URL 2 of 2 (memory) has no usable host and port"),
    ],
)
def test_urls_that_cannot_be_tried_are_refused_without_quoting_them(url: str, says: str) -> None:
    with pytest.raises(bc.UnusableUrlError) as raised:
        bc.parse_urls(url)
    message = str(raised.value)
    assert says in message
    for secret in (USER, PASSWORD, "12", "34"):
        assert secret not in message
    # The check itself says the same and counts it as no answer (it never restarts for it).
    assert bc.try_broker(url) == (False, message)


def test_redis_greeting_authenticates_with_the_username_then_pings() -> None:
    assert bc.resp_command([b"PING"]) == b"*1\r\n$4\r\nPING\r\n"
    assert bc.resp_command([b"AUTH", b"u", b"p\r\n"]) == (
        b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$3\r\np\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("replies", "problem"),
    [
        ([b"+PONG"], None),
        ([b"+OK", b"+PONG"], None),
        # Credentials refused: this worker could not use the server either; a restart would not
        # change that, so it counts as no answer.
        ([b"-WRONGPASS invalid username-password pair", b"-NOAUTH Authentication required."],
         "answered WRONGPASS then NOAUTH, not PONG"),
        ([b"-NOAUTH Authentication required."], "answered NOAUTH, not PONG"),
        ([b"-LOADING Redis is loading the dataset in memory"], "answered LOADING, not PONG"),
        ([b"-err " + PASSWORD.encode()], "answered an error, not PONG"),
        ([b"$4"], "answered, but not PONG"),
        ([], "closed without answering"),
    ],
)  # fmt: skip
def test_redis_counts_only_pong_and_names_errors_by_their_code(
    replies: list[bytes], problem: str | None
) -> None:
    assert bc.redis_verdict(replies) == problem


CONNECTION_START = bytes.fromhex("0100000000019c000a000a0009")
"""The first bytes of RabbitMQ's answer to the protocol header: a method frame on channel 0 of
412 bytes, class 10 (connection), method 10 (start), version 0-9."""


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (CONNECTION_START, None),
        (CONNECTION_START[:11], None),
        (b"AMQP\x00\x00\x09\x01", "answered with another AMQP protocol version"),
        (bytes.fromhex("0100000000019c000a001e"), "answered, but not with AMQP's Connection.Start"),
        (b"-ERR unknown command\r\n", "answered, but not with AMQP's Connection.Start"),
        (b"", "closed without answering"),
    ],
)
def test_amqp_counts_only_connection_start(data: bytes, problem: str | None) -> None:
    assert bc.amqp_verdict(data) == problem


def test_a_host_that_spells_a_credential_is_still_masked() -> None:
    endpoint = bc.parse_url("redis://redishost:secretpw@redishost:6379/0")
    answered, message = bc._scrubbed((True, f"{endpoint.where()} answered"), [endpoint])
    assert (answered, message) == (True, "redis://***:6379 answered")
