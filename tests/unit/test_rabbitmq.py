"""The RabbitMQ adapter's pure parts: reading the management API's queue listing, the request
path (vhost encoding), the API address, and what its errors say (never a credential).

The listings below were recorded from Debian's RabbitMQ 3.10.8 (the server of the integration
tier), as answered to :func:`celery_operator.rabbitmq.queues_path`'s request and, for the
statistics shape, to the same request without ``disable_stats``.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import pytest

from celery_operator import rabbitmq
from celery_operator.broker import BrokerUnavailable
from celery_operator.rabbitmq import (
    MANAGEMENT,
    ManagementApi,
    QueueLoad,
    parse_queue_listing,
    queues_path,
)

PASSWORD = "s3cr/et@pa:ss#word"
USER = "celery-operator"

# A worker (concurrency 1, prefetch multiplier 4) holding 4 of 10 tasks of the quorum queue
# "qq" (Celery 5.7 then adds 28 quorum queues for native delayed delivery), as 3.10 answers
# without statistics (``disable_stats=true&enable_queue_totals=true``), shortened.
WORKER_HOLDING = (
    b'[{"messages_ready":0,"messages_unacknowledged":0,"name":"celery_delayed_0"},'
    b'{"messages_ready":0,"messages_unacknowledged":0,"name":"celeryev.01f0be7b-0bb0-48f9-8ffe-9049cc23c558"},'
    b'{"messages_ready":6,"messages_unacknowledged":4,"name":"plain"},'
    b'{"messages_ready":6,"messages_unacknowledged":4,"name":"prio"},'
    b'{"messages_ready":0,"messages_unacknowledged":0,"name":"q@x.celery.pidbox"},'
    b'{"messages_ready":6,"messages_unacknowledged":4,"name":"qq"}]'
)
# The statistics database's answer (no ``disable_stats``): consumers, and a queue declared
# since its last sample listed without counts.
WITH_STATISTICS = json.dumps(
    [
        {"consumers": 1, "messages_ready": 3, "messages_unacknowledged": 2, "name": "plain"},
        {"name": "new"},
    ]
).encode()


def load(waiting: int, in_flight: int | None, consumers: int | None) -> QueueLoad:
    return QueueLoad(waiting, in_flight, consumers, MANAGEMENT)


@dataclass(frozen=True)
class ListingCase:
    id: str
    body: bytes
    queues: list[str]
    expected: dict[str, QueueLoad]


LISTINGS = [
    ListingCase(
        "a worker holding tasks: ready and unacknowledged, consumers not in this answer",
        WORKER_HOLDING,
        ["plain", "prio", "qq"],
        {"plain": load(6, 4, None), "prio": load(6, 4, None), "qq": load(6, 4, None)},
    ),
    ListingCase(
        "a missing queue has nothing waiting, nothing in flight and no consumer",
        WORKER_HOLDING,
        ["plain", "gone"],
        {"plain": load(6, 4, None), "gone": load(0, 0, 0)},
    ),
    ListingCase(
        "queues nobody asked about are left out; the order is the caller's",
        WORKER_HOLDING,
        ["qq", "plain"],
        {"qq": load(6, 4, None), "plain": load(6, 4, None)},
    ),
    ListingCase(
        "consumers are taken when the answer has them (statistics)",
        WITH_STATISTICS,
        ["plain"],
        {"plain": load(3, 2, 1)},
    ),
    ListingCase(
        "a priority queue is one entry, counted once whatever its priorities",
        b'[{"name": "p", "messages_ready": 7, "messages_unacknowledged": 1,'
        b' "arguments": {"x-max-priority": 10}}]',
        ["p"],
        {"p": load(7, 1, None)},
    ),
    ListingCase("an empty vhost", b"[]", ["celery"], {"celery": load(0, 0, 0)}),
    ListingCase("nothing asked", WORKER_HOLDING, [], {}),
    ListingCase(
        "names are exact: no case folding, no prefix matching",
        b'[{"name": "Celery", "messages_ready": 5, "messages_unacknowledged": 0}]',
        ["celery", "Cel"],
        {"celery": load(0, 0, 0), "Cel": load(0, 0, 0)},
    ),
]


@pytest.mark.parametrize("case", LISTINGS, ids=[c.id for c in LISTINGS])
def test_parse_queue_listing(case: ListingCase) -> None:
    assert parse_queue_listing(case.body, case.queues) == case.expected


@dataclass(frozen=True)
class BadListing:
    id: str
    body: bytes
    message: str


BAD_LISTINGS = [
    BadListing("not JSON", b"<html>proxy login</html>", "the management API's answer is not JSON"),
    BadListing("an object", b'{"error": "x"}', "the management API's answer is not a list"),
    BadListing("an entry without a name", b'[{"messages_ready": 1}]', "is not a list of queues"),
    BadListing(
        "a queue listed without counts (statistics not sampled yet) is not guessed as 0",
        WITH_STATISTICS,
        "queue 'new' is listed without its message counts",
    ),
    BadListing(
        "a queue whose node is down",
        b'[{"name": "celery", "state": "down", "arguments": {}}]',
        "queue 'celery' is listed without its message counts (state 'down')",
    ),
    BadListing(
        "a count that is not a number",
        b'[{"name": "celery", "messages_ready": "5", "messages_unacknowledged": 0}]',
        "queue 'celery' is listed without its message counts",
    ),
    BadListing(
        "true is not a count",
        b'[{"name": "celery", "messages_ready": true, "messages_unacknowledged": 0}]',
        "queue 'celery' is listed without its message counts",
    ),
    BadListing(
        "a negative count",
        b'[{"name": "celery", "messages_ready": 1, "messages_unacknowledged": -1}]',
        "queue 'celery' is listed without its message counts",
    ),
]


@pytest.mark.parametrize("case", BAD_LISTINGS, ids=[c.id for c in BAD_LISTINGS])
def test_a_listing_that_cannot_be_counted_is_broker_unavailable(case: BadListing) -> None:
    queues = ["celery", "new", "plain"]
    with pytest.raises(BrokerUnavailable) as raised:
        parse_queue_listing(case.body, queues)
    assert case.message in str(raised.value)


def test_a_queue_listed_without_counts_that_nobody_asked_about_does_not_matter() -> None:
    assert parse_queue_listing(WITH_STATISTICS, ["plain"]) == {"plain": load(3, 2, 1)}


COLUMNS_AND_TOTALS = (
    "?columns=name,messages_ready,messages_unacknowledged,consumers"
    "&disable_stats=true&enable_queue_totals=true"
)


@pytest.mark.parametrize(
    ("vhost", "prefix", "path"),
    [
        ("/", "", "/api/queues/%2F"),
        ("celery/tests", "", "/api/queues/celery%2Ftests"),
        ("shop", "", "/api/queues/shop"),
        ("a b%c?d#e", "", "/api/queues/a%20b%25c%3Fd%23e"),
        ("prod-ü", "", "/api/queues/prod-%C3%BC"),
        ("/", "/rabbitmq", "/rabbitmq/api/queues/%2F"),
        ("/", "/rabbitmq/", "/rabbitmq/api/queues/%2F"),
    ],
)
def test_queues_path_encodes_the_whole_vhost(vhost: str, prefix: str, path: str) -> None:
    assert queues_path(vhost, prefix) == path + COLUMNS_AND_TOTALS


# --- the API's address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "display"),
    [
        ("http://rabbit.prod.svc:15672", "http://rabbit.prod.svc:15672"),
        ("https://rabbit.example", "https://rabbit.example:443"),
        ("http://127.0.0.1:15672/rabbitmq/", "http://127.0.0.1:15672"),
        ("http://[::1]:15672", "http://[::1]:15672"),
    ],
)
def test_management_api_display_is_scheme_host_and_port(url: str, display: str) -> None:
    assert ManagementApi(url, USER, PASSWORD).display == display


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://{USER}:{PASSWORD}@rabbit:15672", "credentials go in the Secret"),
        (f"http://rabbit:15672/?password={PASSWORD}", "credentials go in the Secret"),
        ("amqp://rabbit:5672", "must start with http:// or https://"),
        ("rabbit:15672", "must start with http:// or https://"),
        ("http://rabbit:15x72", "port must be a number"),
        ("http://:15672", "names no host"),
    ],
)
def test_a_management_url_that_cannot_be_used_is_refused_without_quoting_it(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        ManagementApi(url, USER, PASSWORD)
    assert PASSWORD not in str(raised.value)
    assert "rabbit" not in str(raised.value)


def test_management_api_repr_has_no_password() -> None:
    assert PASSWORD not in repr(ManagementApi("http://rabbit:15672", USER, PASSWORD))


# --- errors, redacted --------------------------------------------------------------------------


class FakeHttp:
    """Stands for http.client's connections: fails as told, or answers ``status`` and ``body``."""

    error: ClassVar[BaseException | None] = None
    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b"[]"
    requests: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def __init__(self, host: str, port: int | None, timeout: float, **kwargs: Any) -> None:
        self.timeout = timeout

    def request(self, method: str, path: str, headers: dict[str, str]) -> None:
        FakeHttp.requests.append((path, headers))
        if FakeHttp.error is not None:
            raise FakeHttp.error

    def getresponse(self) -> FakeHttp:
        return self

    def read(self, limit: int) -> bytes:
        return FakeHttp.body[:limit]

    def close(self) -> None:
        pass


@pytest.fixture
def fake_http(monkeypatch: pytest.MonkeyPatch) -> type[FakeHttp]:
    monkeypatch.setattr(FakeHttp, "error", None)
    monkeypatch.setattr(FakeHttp, "status", 200)
    monkeypatch.setattr(FakeHttp, "body", b"[]")
    monkeypatch.setattr(FakeHttp, "requests", [])
    monkeypatch.setattr(http.client, "HTTPConnection", FakeHttp)
    monkeypatch.setattr(http.client, "HTTPSConnection", FakeHttp)
    return FakeHttp


API = ManagementApi("http://rabbit.prod.svc:15672", USER, PASSWORD)


def test_one_request_with_basic_auth_for_all_queues(fake_http: type[FakeHttp]) -> None:
    fake_http.body = WORKER_HOLDING
    loads = rabbitmq.read_management(API, "/", ["plain", "prio", "qq", "gone"], timeout=2)
    assert loads["gone"] == load(0, 0, 0)
    assert len(fake_http.requests) == 1
    path, headers = fake_http.requests[0]
    assert path == "/api/queues/%2F" + COLUMNS_AND_TOTALS
    assert headers["Authorization"] == "Basic Y2VsZXJ5LW9wZXJhdG9yOnMzY3IvZXRAcGE6c3Mjd29yZA=="


def test_nothing_asked_is_no_request(fake_http: type[FakeHttp]) -> None:
    assert rabbitmq.read_management(API, "/", [], timeout=2) == {}
    assert fake_http.requests == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "[Errno 111] Connection refused"),
        (TimeoutError("timed out"), "timed out"),
        (
            OSError(f"cannot reach http://{USER}:{PASSWORD}@rabbit.prod.svc:15672/api"),
            "cannot reach http://***@rabbit.prod.svc:15672/api",
        ),
        (OSError(f"login {PASSWORD} was refused"), "login *** was refused"),
        (http.client.RemoteDisconnected("Remote end closed"), "Remote end closed"),
        (http.client.BadStatusLine(""), "BadStatusLine"),  # its text is "''"
    ],
)
def test_transport_errors_are_broker_unavailable_and_redacted(
    fake_http: type[FakeHttp], error: BaseException, expected: str
) -> None:
    fake_http.error = error
    with pytest.raises(BrokerUnavailable) as raised:
        rabbitmq.read_management(API, "/", ["celery"], timeout=2)
    message = str(raised.value)
    assert message == (
        f"the management API http://rabbit.prod.svc:15672: cannot list the queues: {expected}"
    )
    assert PASSWORD not in message
    assert "s3cr" not in message
    assert raised.value.__cause__ is None  # a traceback would print the original text


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            b'{"error":"not_authorised","reason":"User not authorised to access virtual host"}',
            "refused the login for vhost '/' (401: wrong credentials, a user without the "
            "monitoring or management tag, or without access to the vhost): User not "
            "authorised to access virtual host",
        ),
        (
            401,
            f'{{"error":"not_authorised","reason":"Login failed for {PASSWORD}"}}'.encode(),
            "refused the login for vhost '/' (401: wrong credentials, a user without the "
            "monitoring or management tag, or without access to the vhost): Login failed for ***",
        ),
        (
            404,
            b'{"error":"Object Not Found","reason":"Not Found"}',
            "has no vhost '/' (404), or the URL is not the management API: Not Found",
        ),
        (502, b"<html>Bad Gateway</html>", "answered 502 Bad Gateway"),
        (599, b"", "answered 599 unexpected status"),
    ],
)
def test_a_refusal_says_what_it_means(
    fake_http: type[FakeHttp], status: int, body: bytes, expected: str
) -> None:
    fake_http.status, fake_http.body = status, body
    with pytest.raises(BrokerUnavailable) as raised:
        rabbitmq.read_management(API, "/", ["celery"], timeout=2)
    assert str(raised.value) == f"the management API http://rabbit.prod.svc:15672: {expected}"


def test_a_bad_listing_names_the_api_and_the_vhost(fake_http: type[FakeHttp]) -> None:
    fake_http.body = b'[{"name": "celery", "state": "down"}]'
    with pytest.raises(BrokerUnavailable) as raised:
        rabbitmq.read_management(API, "celery/tests", ["celery"], timeout=2)
    assert str(raised.value) == (
        "the management API http://rabbit.prod.svc:15672 (vhost 'celery/tests'): "
        "queue 'celery' is listed without its message counts (state 'down')"
    )


def test_an_answer_too_large_is_refused(
    fake_http: type[FakeHttp], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rabbitmq, "MAX_ANSWER_BYTES", 10)
    fake_http.body = WORKER_HOLDING
    with pytest.raises(BrokerUnavailable, match="larger than 10 B"):
        rabbitmq.read_management(API, "/", ["celery"], timeout=2)


# --- the AMQP fallback's errors ---------------------------------------------------------------

AMQP_URL = f"amqp://{USER}:{quote(PASSWORD, safe='')}@rabbit:5672/shop"


class FailingConnection:
    """Stands for kombu's Connection: connecting fails with a text that quotes the URL."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.released = False
        self.retries: int | None = None
        self.connection_errors = (ConnectionError,)
        self.channel_errors = (LookupError,)
        FailingConnection.made.append(self)

    made: ClassVar[list[FailingConnection]] = []

    def ensure_connection(self, max_retries: int, timeout: float) -> None:
        self.retries = max_retries
        raise ConnectionError(f"[Errno 111] connecting to {self.url} refused")

    def release(self) -> None:
        self.released = True


def test_amqp_errors_are_broker_unavailable_and_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbitmq, "Connection", FailingConnection)
    monkeypatch.setattr(FailingConnection, "made", [])
    with pytest.raises(BrokerUnavailable) as raised:
        rabbitmq.read_amqp(AMQP_URL, ["celery"], timeout=2)
    assert str(raised.value) == (
        "amqp://rabbit:5672/shop: cannot read the queues: "
        "[Errno 111] connecting to amqp://rabbit:5672/shop refused"
    )
    assert raised.value.__cause__ is None
    assert [c.released for c in FailingConnection.made] == [True]


def test_each_host_of_a_failover_list_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq, "Connection", FailingConnection)
    monkeypatch.setattr(FailingConnection, "made", [])
    second = AMQP_URL.replace("@rabbit:", "@rabbit-2:")
    with pytest.raises(BrokerUnavailable):
        rabbitmq.read_amqp(f"{AMQP_URL};{second}", ["celery"], timeout=2)
    # kombu's retries switch to the next host, and sleep only after a whole round.
    assert [c.retries for c in FailingConnection.made] == [1]


@pytest.mark.parametrize("url", ["redis://rabbit:6379/0", "sqs://rabbit"])
def test_the_amqp_fallback_reads_only_amqp_urls(url: str) -> None:
    with pytest.raises(ValueError, match="is not supported"):
        rabbitmq.read_amqp(url, ["celery"], timeout=2)
