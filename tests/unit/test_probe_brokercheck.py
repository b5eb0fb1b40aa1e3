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


# --- Redis Sentinel and the CA file: the options, the replies --------------------------------

SENTINELS = "sentinel://:pw-of-master@s1:26379/0;sentinel://:pw-of-master@s2/0"


@pytest.mark.parametrize(
    ("environ", "master_name", "sentinel_auth", "problem"),
    [
        ({}, "", (b"", b""), ""),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": '{"master_name": "mymaster"}'}, "mymaster",
         (b"", b""), ""),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS":
          '{"master_name": "m", "sentinel_kwargs": {"username": "u", "password": "s/cret"}}'},
         "m", (b"u", b"s/cret"), ""),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": "[1]"}, "", (b"", b""),
         "$CELERY_BROKER_TRANSPORT_OPTIONS is not a JSON object"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": '{"master_name": "m", "password": "s/cret"'}, "",
         (b"", b""), "$CELERY_BROKER_TRANSPORT_OPTIONS is not a JSON object"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": '{"master_name": 3}'}, "", (b"", b""),
         "master_name or sentinel_kwargs in $CELERY_BROKER_TRANSPORT_OPTIONS unusable"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS":
          '{"master_name": "m", "sentinel_kwargs": {"password": 7}}'}, "", (b"", b""),
         "sentinel_kwargs' credentials in $CELERY_BROKER_TRANSPORT_OPTIONS unusable"),
    ],
)  # fmt: skip
def test_sentinel_options_come_from_the_transport_options_json(
    environ: dict[str, str], master_name: str, sentinel_auth: tuple[bytes, bytes], problem: str
) -> None:
    options = bc.read_options(environ, sentinel=True)
    assert options.master_name == master_name
    assert (options.sentinel_username, options.sentinel_password) == sentinel_auth
    assert options.problem == problem
    assert "s/cret" not in repr(options)


def test_transport_options_are_read_only_for_sentinel_urls_and_the_ca_file_always() -> None:
    environ = {"CELERY_BROKER_TRANSPORT_OPTIONS": "not json", "CELERY_BROKER_CA_FILE": "/ca.pem"}
    options = bc.read_options(environ, sentinel=False)
    assert (options.problem, options.ca_file) == ("", "/ca.pem")
    assert bc.options_problem(bc.parse_urls("redis://h/0"), options) == ""
    assert bc.CA_FILE_ENV == "CELERY_BROKER_CA_FILE"


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({}, "sentinel URLs need master_name in $CELERY_BROKER_TRANSPORT_OPTIONS"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": '{"sep": ":"}'}, "sentinel URLs need master_name"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": "{"}, "is not a JSON object"),
    ],
)
def test_a_sentinel_url_without_a_usable_master_name_is_not_tried(
    environ: dict[str, str], says: str
) -> None:
    """kombu refuses it too: the worker cannot be using the broker, a restart changes nothing."""
    answered, message = bc.try_broker(SENTINELS, environ=environ)
    assert not answered
    assert says in message
    assert "pw-of-master" not in message


@pytest.mark.parametrize(
    ("data", "replies"),
    [
        (b"+OK\r\n*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n", [b"+OK", [b"127.0.0.1", b"6379"]]),
        (b"*-1\r\n", [None]),
        (b"$-1\r\n+PONG\r\n", [None, b"+PONG"]),
        (b"-NOAUTH Authentication required.\r\n", [b"-NOAUTH Authentication required."]),
        (b"$5\r\na\r\nbc\r\n", [b"a\r\nbc"]),  # a bulk string may hold CR LF
        (b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n63", []),  # incomplete: more to read
        (b"+OK\r\n*2\r\n$9\r\n127.0.0.1\r\n", [b"+OK"]),
        (b"*1\r\n:5\r\n", [[b":5"]]),
        (b"*x\r\n", [b"*x"]),
    ],
)
def test_resp_replies_are_parsed_only_when_complete(data: bytes, replies: list[bc.Reply]) -> None:
    assert bc.parse_replies(data, 2) == replies


@pytest.mark.parametrize(
    ("replies", "master", "problem"),
    [
        ([[b"10.1.2.3", b"6380"]], "10.1.2.3:6380", None),
        ([b"+OK", [b"redis-0.redis.ns.svc", b"6379"]], "redis-0.redis.ns.svc:6379", None),
        ([[b"::1", b"6379"]], "[::1]:6379", None),
        ([None], None, "knows no master named 'mymaster' (master_name in"
         " $CELERY_BROKER_TRANSPORT_OPTIONS)"),
        ([b"-WRONGPASS invalid username-password pair", b"-NOAUTH Authentication required."],
         None, "answered WRONGPASS then NOAUTH, not a master address"),
        ([b"-ERR unknown command 'SENTINEL'"], None, "answered ERR, not a master address"),
        ([[b"h", b"0"]], None, "named a master address this check cannot use"),
        ([[b"h 1", b"6379"]], None, "named a master address this check cannot use"),
        ([[b"h", None]], None, "named a master address this check cannot use"),
        ([[b"h"]], None, "named a master address this check cannot use"),
        ([b"+OK"], None, "answered, but not with a master address"),
        ([], None, "closed without answering"),
    ],
)  # fmt: skip
def test_a_sentinel_names_the_master_or_says_why_not_by_error_code(
    replies: list[bc.Reply], master: str | None, problem: str | None
) -> None:
    found_problem, found = bc.sentinel_verdict(replies, "mymaster")
    assert (found_problem, found.address() if found else None) == (problem, master)


def test_a_master_name_that_is_not_plain_is_not_shown() -> None:
    problem, _ = bc.sentinel_verdict([None], "my master\nFAKE: line")
    assert problem == "knows no master named by master_name"


def test_the_sentinels_password_is_masked_too() -> None:
    endpoints = bc.parse_urls(SENTINELS)
    answered, message = bc._scrubbed(
        (False, "sentinel://s1:26379: s3cret-of-sentinels"),
        endpoints,
        (b"", b"s3cret-of-sentinels"),
    )
    assert (answered, message) == (False, "sentinel://s1:26379: ***")
