"""``celery_operator.broker`` against a real Redis filled by real Celery producers.

The reference for every count is kombu's own: ``queue_declare`` on the producer's channel, whose
``message_count`` sums ``LLEN`` over the queue's priority lists (``Channel._size``).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import redis

from celery_operator import broker
from celery_operator.broker import BrokerUnavailable, read_backlog
from celery_operator.queues import DEFAULT_SEPARATOR, KeyScheme
from tests.integration.procs import RedisServer, client_app

SCHEMES: dict[str, dict[str, object]] = {
    "prefix with kombu's default steps": {
        "global_keyprefix": "x:",
        "priority_steps": [0, 3, 6, 9],
        "sep": DEFAULT_SEPARATOR,
    },
    "prefix, two steps, own separator": {
        "global_keyprefix": "team-b/",
        "priority_steps": [0, 5],
        "sep": ":",
    },
}
SENT = {"alpha": 24, "beta": 13}
"""Tasks published per queue, with priorities cycling 0..9."""


def _scheme(options: dict[str, object]) -> KeyScheme:
    """The operator's view of the same transport options (as the CRD spec would give them)."""
    steps = options["priority_steps"]
    assert isinstance(steps, list)
    return KeyScheme(
        global_keyprefix=str(options["global_keyprefix"]),
        priority_steps=tuple(steps),
        separator=str(options["sep"]),
    )


@pytest.mark.parametrize("options", SCHEMES.values(), ids=SCHEMES.keys())
def test_backlog_equals_kombus_count_with_priorities_and_a_prefix(
    redis_server: RedisServer, redis_client: redis.Redis[bytes], options: dict[str, object]
) -> None:
    app = client_app(redis_server.url, options)
    try:
        for queue, count in SENT.items():
            for i in range(count):
                app.send_task("celery_demo.tasks.add", args=(i, i), queue=queue, priority=i % 10)
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            # Not passive=True: with a global_keyprefix, kombu 5.7's existence check (EXISTS,
            # which its prefixing client leaves unprefixed) finds no queue and raises NOT_FOUND.
            kombu_counts = {
                queue: channel.queue_declare(queue=queue).message_count
                for queue in [*SENT, "missing"]
            }
    finally:
        app.close()

    client = broker.connect(redis_server.url, timeout=2.0)
    backlog = read_backlog(client, [*SENT, "missing"], _scheme(options))

    assert backlog == kombu_counts
    assert backlog == {**SENT, "missing": 0}
    # The undercount we avoid: the bare list holds only the messages of the lowest step.
    prefix = str(options["global_keyprefix"])
    for queue, count in SENT.items():
        assert 0 < redis_client.llen(f"{prefix}{queue}") < count
    # And kombu really wrote the prefixed keys we read.
    assert redis_client.exists("alpha", "beta") == 0


def test_backlog_of_queues_that_were_never_used_is_zero(redis_server: RedisServer) -> None:
    client = broker.connect(redis_server.url, timeout=2.0)
    assert read_backlog(client, ["celery", "other"], KeyScheme()) == {"celery": 0, "other": 0}
    assert read_backlog(client, [], KeyScheme()) == {}


def test_backlog_is_read_in_one_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis[bytes]
) -> None:
    """Counted by the server: ``total_reads_processed`` goes up once per read of a request.

    Reading that counter is itself one request, so every delta below includes one for it.
    """
    scheme = KeyScheme(global_keyprefix="rt:")
    queues = ["a", "b", "c"]
    for queue in queues:
        redis_client.lpush(f"rt:{queue}", "m1", "m2")
        redis_client.lpush(f"rt:{queue}{DEFAULT_SEPARATOR}9", "m3")

    def reads() -> int:
        return int(redis_client.info("stats")["total_reads_processed"])

    def llen_calls() -> int:
        stats = redis_client.info("commandstats")
        return int(stats["cmdstat_llen"]["calls"]) if "cmdstat_llen" in stats else 0

    client = broker.connect(redis_server.url, timeout=2.0)
    client.ping()  # connection and handshake done before measuring

    # Calibration: commands sent one by one are one read each.
    before = reads()
    for queue in queues:
        client.llen(f"rt:{queue}")
    assert reads() - before == len(queues) + 1

    calls_before = llen_calls()
    before = reads()
    backlog = read_backlog(client, queues, scheme)
    after = reads()

    assert backlog == dict.fromkeys(queues, 3)
    assert after - before == 1 + 1
    assert llen_calls() - calls_before == len(queues) * len(scheme.priority_steps)


def test_a_stopped_broker_raises_broker_unavailable_quickly_and_the_client_recovers(
    redis_server: RedisServer,
) -> None:
    timeout = 1.0
    client = broker.connect(redis_server.url, timeout=timeout)
    assert read_backlog(client, ["celery"], KeyScheme()) == {"celery": 0}  # a pooled connection

    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot read queue lengths") as raised:
        read_backlog(client, ["celery"], KeyScheme())
    assert time.monotonic() - started < timeout
    assert isinstance(raised.value.__cause__, redis.ConnectionError)

    redis_server.start()  # same port, empty again: the same client reads from it
    assert read_backlog(client, ["celery"], KeyScheme()) == {"celery": 0}


def test_a_broker_that_stops_answering_raises_within_the_timeout_bound(
    redis_server: RedisServer,
) -> None:
    timeout = 0.5
    client = broker.connect(redis_server.url, timeout=timeout)
    assert read_backlog(client, ["celery"], KeyScheme()) == {"celery": 0}

    redis_server.pause()  # connections still open, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            read_backlog(client, ["celery"], KeyScheme())
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert timeout <= elapsed < (broker.RECONNECT_ATTEMPTS + 1) * timeout + 0.5


def test_only_redis_urls_are_accepted_and_the_error_names_only_the_scheme() -> None:
    with pytest.raises(ValueError, match="'amqp'") as raised:
        broker.connect("amqp://guest:s3cret@rabbit:5672//", timeout=1.0)
    assert "s3cret" not in str(raised.value)
    # Both Redis schemes give a client; it connects on first use, so nothing is reached here.
    for url in ("redis://redis:6379/0", "rediss://:pw@redis:6380/1"):
        assert isinstance(broker.connect(url, timeout=1.0), redis.Redis)


def test_backlog_counts_messages_published_by_priority_step(
    redis_server: RedisServer, redis_client: redis.Redis[bytes]
) -> None:
    """Where kombu put each message, list by list: a map for anyone debugging a count."""
    options = SCHEMES["prefix with kombu's default steps"]
    app = client_app(redis_server.url, options)
    try:
        for priority in (0, 1, 3, 5, 6, 8, 9, 9):
            app.send_task("celery_demo.tasks.add", args=(1, 1), queue="p", priority=priority)
    finally:
        app.close()
    per_list = Counter(
        {key.decode(): redis_client.llen(key) for key in redis_client.scan_iter("x:p*")}
    )
    sep = DEFAULT_SEPARATOR
    assert per_list == {"x:p": 2, f"x:p{sep}3": 2, f"x:p{sep}6": 2, f"x:p{sep}9": 2}
    client = broker.connect(redis_server.url, timeout=2.0)
    assert read_backlog(client, ["p"], _scheme(options)) == {"p": 8}
    assert json.loads(json.dumps(options))["sep"] == "\x06\x16"  # survives the env's JSON


def test_heads_are_the_oldest_message_of_each_priority_list(
    redis_server: RedisServer, redis_client: redis.Redis[bytes]
) -> None:
    options = SCHEMES["prefix with kombu's default steps"]
    app = client_app(redis_server.url, options)
    try:
        first = app.send_task("celery_demo.tasks.add", args=(1, 1), queue="alpha")
        for i in range(3):
            app.send_task("celery_demo.tasks.add", args=(i, i), queue="alpha")
        urgent = app.send_task("celery_demo.tasks.add", args=(9, 9), queue="alpha", priority=9)
    finally:
        app.close()
    client = broker.connect(redis_server.url, timeout=2.0)
    heads = broker.read_heads(client, ["alpha", "missing"], _scheme(options))

    assert heads["missing"] == (None, None, None, None)
    step0, step3, step6, step9 = heads["alpha"]
    assert (step3, step6) == (None, None)
    by_tag: dict[str, str] = {}
    for key in ("x:alpha", f"x:alpha{DEFAULT_SEPARATOR}9"):
        for raw in redis_client.lrange(key, 0, -1):
            message = json.loads(raw)
            by_tag[message["properties"]["delivery_tag"]] = message["headers"]["id"]
    assert step0 is not None
    assert step9 is not None
    assert by_tag[step0] == first.id  # the oldest of the plain list: the first one sent
    assert by_tag[step9] == urgent.id
