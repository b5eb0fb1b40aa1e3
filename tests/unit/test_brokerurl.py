"""Broker URLs: parsed as kombu reads them, refused without quoting them, redacted everywhere.

Every valid URL is also read by kombu (``parse_url``, ``Connection``, the Redis transport's own
database rule) and, for Redis, by redis-py, and the fields must agree. The redaction tests feed
``redact`` the error texts those libraries really raise for URLs whose passwords hold reserved
characters, raised here without connecting anywhere.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import amqp.transport  # type: ignore[import-untyped]
import pytest
import redis
from kombu.connection import Connection
from kombu.transport.redis import Channel
from kombu.utils.url import parse_url

from celery_operator import brokerurl
from celery_operator.brokerurl import (
    KNOWN_SCHEMES,
    MIN_FRAGMENT,
    UNENCODED_MESSAGE,
    BrokerAddress,
    BrokerUrlError,
    check_supported,
    identity,
    parse,
    redact,
)

# --- parse: valid URLs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    id: str
    url: str
    scheme: str
    hosts: tuple[tuple[str, int], ...]
    display: str
    database: int | None = None
    virtual_host: str | None = None
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    tls: bool = False


VALID = [
    Valid(
        "redis without port or path: default port, database 0",
        "redis://localhost",
        "redis", (("localhost", 6379),), "redis://localhost:6379/0", database=0,
    ),
    Valid(
        "redis with a password only",
        "redis://:pw@h:1/2",
        "redis", (("h", 1),), "redis://h:1/2", database=2, password="pw",
    ),
    Valid(
        "redis ACL user and password on the default port",
        "redis://user:pw@h/3",
        "redis", (("h", 6379),), "redis://h:6379/3", database=3, username="user", password="pw",
    ),
    Valid(
        "rediss with a port and a TLS option",
        "rediss://h:6380/0?ssl_cert_reqs=required",
        "rediss", (("h", 6380),), "rediss://h:6380/0", database=0,
        query={"ssl_cert_reqs": "required"}, tls=True,
    ),
    Valid(
        "rediss on the default port",
        "rediss://cache/1",
        "rediss", (("cache", 6379),), "rediss://cache:6379/1", database=1, tls=True,
    ),
    Valid(
        "sentinel failover list: one host per sentinel",
        "sentinel://h1:26379;sentinel://h2:26379",
        "sentinel", (("h1", 26379), ("h2", 26379)), "sentinel://h1:26379,h2:26379/0", database=0,
    ),
    Valid(
        "sentinel default port; later sentinels bare, as kombu reads only the first's rest",
        "sentinel://:pw@s1/1;sentinel://s2;sentinel://s3:26380",
        "sentinel", (("s1", 26379), ("s2", 26379), ("s3", 26380)),
        "sentinel://s1:26379,s2:26379,s3:26380/1", database=1, password="pw",
    ),
    Valid(
        "redis failover list of full URLs",
        "redis://:pw@h1/2;redis://:pw@h2:6380/2",
        "redis", (("h1", 6379), ("h2", 6380)), "redis://h1:6379,h2:6380/2", database=2,
        password="pw",
    ),
    Valid(
        "amqp vhost / written as //",
        "amqp://guest:guest@localhost:5672//",
        "amqp", (("localhost", 5672),), "amqp://localhost:5672//", virtual_host="/",
        username="guest", password="guest",
    ),
    Valid(
        "amqp without a path: vhost /",
        "amqp://rabbit",
        "amqp", (("rabbit", 5672),), "amqp://rabbit:5672//", virtual_host="/",
    ),
    Valid(
        "amqp with an empty path: vhost / too",
        "amqp://rabbit/",
        "amqp", (("rabbit", 5672),), "amqp://rabbit:5672//", virtual_host="/",
    ),
    Valid(
        "amqp vhost / percent-encoded",
        "amqp://rabbit/%2F",
        "amqp", (("rabbit", 5672),), "amqp://rabbit:5672//", virtual_host="/",
    ),
    Valid(
        "amqp named vhost, a slash in it encoded",
        "amqp://u:p@rabbit/shop%2Feu",
        "amqp", (("rabbit", 5672),), "amqp://rabbit:5672/shop%2Feu", virtual_host="shop/eu",
        username="u", password="p",
    ),
    Valid(
        "amqps on its own default port 5671",
        "amqps://rabbit",
        "amqps", (("rabbit", 5671),), "amqps://rabbit:5671//", virtual_host="/", tls=True,
    ),
    Valid(
        "pyamqp is amqp by another name",
        "pyamqp://rabbit:5673/v",
        "pyamqp", (("rabbit", 5673),), "pyamqp://rabbit:5673/v", virtual_host="v",
    ),
    Valid(
        "IPv6 redis host with a port",
        "redis://[::1]:6379/0",
        "redis", (("::1", 6379),), "redis://[::1]:6379/0", database=0,
    ),
    Valid(
        "IPv6 amqps host on the default port",
        "amqps://[::1]",
        "amqps", (("::1", 5671),), "amqps://[::1]:5671//", virtual_host="/", tls=True,
    ),
    Valid(
        "percent-encoded reserved characters in a password are decoded",
        "redis://:a%2Fb%40c%23d%3Fe%25f%3Ag%3Bh@h:6390/9",
        "redis", (("h", 6390),), "redis://h:6390/9", database=9, password="a/b@c#d?e%f:g;h",
    ),
    Valid(
        "an unencoded colon in a password: every library splits at the first one",
        "redis://:a:b@h/0",
        "redis", (("h", 6379),), "redis://h:6379/0", database=0, password="a:b",
    ),
    Valid(
        "spaces and non-ASCII letters in a password",
        "redis://:pä ss@h/0",
        "redis", (("h", 6379),), "redis://h:6379/0", database=0, password="pä ss",
    ),
    Valid(
        "scheme and host in capitals",
        "REDIS://Cache.Local:6390/4",
        "redis", (("cache.local", 6390),), "redis://cache.local:6390/4", database=4,
    ),
    Valid(
        "a trailing line break, as echo writes a Secret",
        "redis://cache/5\n",
        "redis", (("cache", 6379),), "redis://cache:6379/5", database=5,
    ),
    Valid(
        "database after //: kombu drops one more slash",
        "redis://cache//3",
        "redis", (("cache", 6379),), "redis://cache:6379/3", database=3,
    ),
    Valid(
        "database path / alone is 0",
        "redis://cache/",
        "redis", (("cache", 6379),), "redis://cache:6379/0", database=0,
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_parse_reads_every_field(case: Valid) -> None:
    address = parse(case.url)
    assert address == BrokerAddress(
        scheme=case.scheme,
        hosts=case.hosts,
        database=case.database,
        virtual_host=case.virtual_host,
        username=case.username,
        password=case.password,
        query=case.query,
    )
    assert (address.display, str(address), address.tls) == (case.display, case.display, case.tls)
    scheme_end = case.url.index("://")
    assert address.url == case.url[:scheme_end].lower() + case.url[scheme_end:].strip()


def _kombu_database(path: str | None) -> int:
    """kombu's Redis transport's own rule for a URL path, run on a never-connected Channel."""
    database: int = object.__new__(Channel)._prepare_virtual_host(path)  # type: ignore[no-untyped-call]
    return database


def _kombu(url: str) -> Any:
    """A kombu Connection: it parses the URL and does not connect."""
    return Connection(url)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_parse_agrees_with_kombu(case: Valid) -> None:
    address = parse(case.url)
    entries = case.url.strip().split(";")  # as kombu.Connection splits a failover list
    assert len(entries) == len(address.hosts)
    for entry, (host, port) in zip(entries, address.hosts, strict=True):
        theirs = parse_url(entry)
        assert theirs["transport"] == address.scheme
        assert (theirs["hostname"], theirs["port"] or brokerurl.DEFAULT_PORTS[address.scheme]) == (
            host,
            port,
        )
    first = parse_url(entries[0])
    assert (first["userid"], first["password"]) == (address.username, address.password)
    if address.database is not None:
        assert _kombu_database(first["virtual_host"]) == address.database
    else:
        assert (first["virtual_host"] or "/") == address.virtual_host
    connection = _kombu(case.url.strip())
    assert connection.hostname == address.hosts[0][0]
    assert (connection.userid, connection.password) == (address.username, address.password)
    if address.virtual_host is not None:
        assert connection.virtual_host == address.virtual_host


REDIS_PY_SCHEMES = ("redis", "rediss")


@pytest.mark.parametrize(
    "case",
    [c for c in VALID if c.scheme in REDIS_PY_SCHEMES and ";" not in c.url],
    ids=[c.id for c in VALID if c.scheme in REDIS_PY_SCHEMES and ";" not in c.url],
)
def test_parse_agrees_with_redis_py(case: Valid) -> None:
    """The operator reads a Redis broker with redis-py: it must see the same database."""
    address = parse(case.url)
    kwargs = redis.Redis.from_url(address.url).connection_pool.connection_kwargs
    seen = (kwargs["host"], kwargs.get("port", 6379), kwargs.get("db", 0))
    assert seen == (*address.hosts[0], address.database)  # redis-py's defaults applied
    assert (kwargs.get("username"), kwargs.get("password")) == (address.username, address.password)


def test_repr_and_display_hold_no_secret() -> None:
    address = parse("rediss://admin:hunter2-secret@cache:6380/1?ssl_certfile=/etc/k.pem")
    for text in (repr(address), str(address), address.display):
        assert "hunter2" not in text
        assert "ssl_certfile" not in text
        assert "admin:" not in text
    assert "admin" in repr(address)  # the user name is no secret, and helps
    assert address.password == "hunter2-secret"
    assert address.url.startswith("rediss://admin:hunter2-secret@")


# --- parse: refused URLs ----------------------------------------------------------------------

SUPPORTED_LIST = "amqp, amqps, pyamqp, redis, rediss, sentinel"
NO_SCHEME_MESSAGE = "the URL has no scheme; it must start with one such as redis:// or amqp://"
HOST_MESSAGE = "the URL's host is not a host name or an IP address"
PORT_MESSAGE = "the URL's port must be a number from 1 to 65535"
DATABASE_MESSAGE = "the URL's Redis database must be a number of 0 or more (e.g. /0)"
PERCENT_MESSAGE = "the URL has a % that is not followed by two hex digits; write a literal % as %25"
SAME_REST_MESSAGE = "the URLs of a failover list (separated by ;) may differ only in host and port"


@dataclass(frozen=True)
class Invalid:
    id: str
    url: str
    reason: str
    message: str


INVALID = [
    Invalid("empty", "", "Empty", "the URL is empty"),
    Invalid("only whitespace", " \n", "Empty", "the URL is empty"),
    Invalid("host and port without a scheme", "cache:6390/9", "NoScheme", NO_SCHEME_MESSAGE),
    Invalid("scheme-relative", "//cache:6390/9", "NoScheme", NO_SCHEME_MESSAGE),
    Invalid("scheme not a word", "1abc://cache", "NoScheme", NO_SCHEME_MESSAGE),
    Invalid(
        "a known transport the operator does not read is named",
        "sqs://key:s3cretkey@queue",
        "UnsupportedScheme",
        f"broker URL scheme 'sqs' is not supported (supported: {SUPPORTED_LIST})",
    ),
    Invalid(
        "an unknown scheme is not repeated: it may be a piece of a secret",
        "s3cretpass://cache/0",
        "UnsupportedScheme",
        f"broker URL scheme is not supported (supported: {SUPPORTED_LIST})",
    ),
    Invalid("no host at all", "redis://", "MissingHost", "the URL names no host"),
    Invalid("credentials but no host", "redis://:pw@/0", "MissingHost", "the URL names no host"),
    Invalid("amqp without a host", "amqp:///shop", "MissingHost", "the URL names no host"),
    Invalid("a space in the host", "redis://ca che/0", "InvalidHost", HOST_MESSAGE),
    Invalid("unclosed IPv6 bracket", "redis://[::1/0", "InvalidHost", HOST_MESSAGE),
    Invalid("IPv6 literal that is not one", "redis://[cafe::z]:1/0", "InvalidHost", HOST_MESSAGE),
    Invalid("text after an IPv6 literal", "redis://[::1]x/0", "InvalidHost", HOST_MESSAGE),
    Invalid("port not a number", "redis://cache:six/0", "InvalidPort", PORT_MESSAGE),
    Invalid("port zero", "redis://cache:0/0", "InvalidPort", PORT_MESSAGE),
    Invalid("port above 65535", "redis://cache:65536/0", "InvalidPort", PORT_MESSAGE),
    Invalid("port with a sign", "redis://cache:+80/0", "InvalidPort", PORT_MESSAGE),
    Invalid("two ports", "redis://cache:1:2/0", "InvalidPort", PORT_MESSAGE),
    Invalid("database not a number", "redis://cache/shop", "InvalidDatabase", DATABASE_MESSAGE),
    Invalid("database negative", "redis://cache/-1", "InvalidDatabase", DATABASE_MESSAGE),
    Invalid("database with a sign", "redis://cache/+1", "InvalidDatabase", DATABASE_MESSAGE),
    Invalid("database then a slash", "redis://cache/1/", "InvalidDatabase", DATABASE_MESSAGE),
    Invalid("sentinel database a word", "sentinel://s/x", "InvalidDatabase", DATABASE_MESSAGE),
    Invalid(
        "database in the query, which kombu refuses and redis-py prefers",
        "redis://cache/0?db=3",
        "InvalidDatabase",
        "the URL's Redis database belongs in its path (e.g. /0), not in ?db=",
    ),
    Invalid(
        "the issue: a slash in a password (urllib reads the port from it)",
        "redis://:s3cr/et99@cache:6390/9", "Unparseable", UNENCODED_MESSAGE,
    ),
    Invalid(
        "a slash in a password after a user name (kombu would connect to host 'admin')",
        "redis://admin:12/s3cret@cache:6390/9", "Unparseable", UNENCODED_MESSAGE,
    ),
    Invalid(
        "a slash in an amqp password (kombu's vhost would hold the real host)",
        "amqp://admin:12/s3cret@rabbit:5672//", "Unparseable", UNENCODED_MESSAGE,
    ),
    Invalid("a ? in a password", "redis://:s3cr?et99@c/0", "Unparseable", UNENCODED_MESSAGE),
    Invalid("a hash in a password", "redis://:s3cr#et99@cache/0", "Unparseable", UNENCODED_MESSAGE),
    Invalid("a second @ in a password", "redis://:s3cr@et99@c/0", "Unparseable", UNENCODED_MESSAGE),
    Invalid("a bracket in a password", "redis://:s3cr[et99@c/0", "Unparseable", UNENCODED_MESSAGE),
    Invalid(
        "a semicolon in a password (kombu cuts the URL in two)",
        "redis://:s3cr;et99@cache:6390/9", "Unparseable", UNENCODED_MESSAGE,
    ),
    Invalid(
        "a semicolon in a sentinel password",
        "sentinel://:s3cr;et99@s1;sentinel://s2", "Unparseable", UNENCODED_MESSAGE,
    ),
    Invalid(
        "a % without two hex digits", "redis://:s3cr%zzet@cache/0",
        "InvalidPercentEncoding", PERCENT_MESSAGE,
    ),
    Invalid(
        "a % at the end of a password", "redis://:s3cret%@cache/0",
        "InvalidPercentEncoding", PERCENT_MESSAGE,
    ),
    Invalid(
        "percent-encoded bytes that are not UTF-8", "redis://:s3cr%C3%28et@cache/0",
        "InvalidPercentEncoding", "the URL's percent-encoded bytes are not valid UTF-8",
    ),
    Invalid(
        "a fragment", "redis://cache/0#primary", "Unparseable",
        "the URL must not have a fragment (#…)",
    ),
    Invalid(
        "a line break inside (two URLs in one Secret key)", "redis://cache/0\nredis://backup/0",
        "Unparseable", "the URL contains a line break or another control character",
    ),
    Invalid(
        "failover list mixing schemes", "redis://cache1;amqp://cache2",
        "InvalidFailover", "the URLs of a failover list (separated by ;) must share one scheme",
    ),
    Invalid(
        "failover list with different passwords", "redis://:one1@cache1/0;redis://:two2@cache2/0",
        "InvalidFailover", SAME_REST_MESSAGE,
    ),
    Invalid(
        "failover list with different databases", "redis://cache1/0;redis://cache2/1",
        "InvalidFailover", SAME_REST_MESSAGE,
    ),
    Invalid(
        "redis failover entry without the password (kombu would send none there)",
        "redis://:pw@cache1/0;redis://cache2/0", "InvalidFailover", SAME_REST_MESSAGE,
    ),
    Invalid(
        "sentinel entry naming another database than the first",
        "sentinel://s1/1;sentinel://s2/2", "InvalidFailover", SAME_REST_MESSAGE,
    ),
    Invalid(
        "failover list with an empty entry", "redis://cache1/0;",
        "InvalidFailover", "the failover list (separated by ;) has an empty entry",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_parse_refuses_with_a_reason_and_a_message(case: Invalid) -> None:
    with pytest.raises(BrokerUrlError) as raised:
        parse(case.url)
    assert (raised.value.reason, str(raised.value)) == (case.reason, case.message)
    assert isinstance(raised.value, ValueError)


def _pieces(url: str) -> set[str]:
    """Runs of letters and digits of at least MIN_FRAGMENT characters, scheme words aside."""
    return {
        piece.lower()
        for piece in re.split(r"[^0-9A-Za-zÀ-ɏ]+", url)
        if len(piece) >= MIN_FRAGMENT and piece.lower() not in KNOWN_SCHEMES
    }


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_no_error_repeats_any_part_of_the_url(case: Invalid) -> None:
    with pytest.raises(BrokerUrlError) as raised:
        parse(case.url)
    message = str(raised.value).lower()
    assert not [piece for piece in _pieces(case.url) if piece in message]


def test_noise_gets_an_address_or_a_broker_url_error_and_redact_never_fails() -> None:
    """Nothing else escapes parse() (a bare ValueError could carry a piece of the URL)."""
    rng = random.Random(12)
    alphabet = "redis:/@#?%;[]amqp0123456789abcxyzé \t.-_+%2F%41"
    outcomes: Counter[str] = Counter()
    for _ in range(3000):
        noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        text = rng.choice(["", "redis://", "amqp://", "sentinel://"]) + noise
        try:
            parse(text)
            outcomes["parsed"] += 1
        except BrokerUrlError:
            outcomes["refused"] += 1
        assert isinstance(redact(f"error: {text}", text), str)
    assert outcomes["parsed"] > 0
    assert outcomes["refused"] > 0


# --- check_supported and identity -------------------------------------------------------------


def test_check_supported_names_the_scheme_and_what_is_supported() -> None:
    check_supported(parse("rediss://cache/0"), frozenset({"redis", "rediss"}))
    with pytest.raises(BrokerUrlError) as raised:
        check_supported(parse("amqp://u:s3cret@rabbit//"), frozenset({"rediss", "redis"}))
    assert raised.value.reason == "UnsupportedScheme"
    assert (
        str(raised.value) == "broker URL scheme 'amqp' is not supported (supported: redis, rediss)"
    )


@dataclass(frozen=True)
class Pair:
    id: str
    one: str
    other: str
    same: bool


PAIRS = [
    Pair("the same URL spelled three ways", "redis://Cache:6379/0", "redis://cache", True),
    Pair("vhost / as // and as %2F", "amqp://rabbit//", "amqp://rabbit/%2F", True),
    Pair("pyamqp and amqp are one transport", "pyamqp://rabbit/v", "amqp://rabbit:5672/v", True),
    Pair("a client option is no other broker", "redis://c/0", "redis://c/0?socket_timeout=5", True),
    Pair("another database", "redis://cache/0", "redis://cache/1", False),
    Pair("another vhost", "amqp://rabbit/a", "amqp://rabbit/b", False),
    Pair("another password", "redis://:one1@cache/0", "redis://:two2@cache/0", False),
    Pair("another user", "redis://a:pw@cache/0", "redis://b:pw@cache/0", False),
    Pair("with and without TLS", "redis://cache/0", "rediss://cache/0", False),
    Pair("another TLS option", "rediss://c/0", "rediss://c/0?ssl_cert_reqs=none", False),
    Pair("another port", "redis://cache:6379/0", "redis://cache:6380/0", False),
    Pair("another sentinel list", "sentinel://s1;sentinel://s2", "sentinel://s1", False),
]  # fmt: skip


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_identity_says_which_brokers_are_the_same(pair: Pair) -> None:
    one, other = identity(parse(pair.one)), identity(parse(pair.other))
    assert (one == other) is pair.same
    assert len({one, other}) == (1 if pair.same else 2)  # as keys of a dict of connections


def test_identity_is_a_dictionary_key_whose_repr_hides_the_password() -> None:
    key = identity(parse("redis://:hunter2-secret@cache/0"))
    shared = {(key, "prefix:"): "connection"}
    assert shared[(identity(parse("redis://:hunter2-secret@CACHE:6379/0")), "prefix:")]
    assert "hunter2" not in repr(key)
    assert key.password == "hunter2-secret"


# --- redact: generic rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scrub:
    id: str
    text: str
    secrets: tuple[str | None, ...]
    expected: str


SCRUBS = [
    Scrub(
        "text without a secret is left alone",
        "Error 111 connecting to 127.0.0.1:6390. Connection refused.", (),
        "Error 111 connecting to 127.0.0.1:6390. Connection refused.",
    ),
    Scrub(
        "a given URL is shown as its display",
        "cannot reach redis://:pw@cache:1/2 now", ("redis://:pw@cache:1/2",),
        "cannot reach redis://cache:1/2 now",
    ),
    Scrub(
        "a given URL that does not parse is masked whole",
        "cannot use redis://:ab/cd@cache:6390/9.", ("redis://:ab/cd@cache:6390/9",),
        "cannot use ***.",
    ),
    Scrub(
        "the user information of a URL nobody gave is masked",
        "connecting to redis://bob:hunter22@cache:1/0 failed", (),
        "connecting to redis://***@cache:1/0 failed",
    ),
    Scrub(
        "user information holding spaces and @ is masked to the last @",
        "amqp://weird:pa ss@w@rabbit// refused", (), "amqp://***@rabbit// refused",
    ),
    Scrub(
        "two URLs on one line each lose their own user information",
        "tried redis://a:x1@h1/0 then redis://b:y2@h2/0", (),
        "tried redis://***@h1/0 then redis://***@h2/0",
    ),
    Scrub(
        "query strings of URLs are masked",
        "rediss://cache:1/0?ssl_keyfile=/k.pem&ssl_cert_reqs=none is bad", (),
        "rediss://cache:1/0?*** is bad",
    ),
    Scrub(
        "urllib's quoted port is masked even with no secret given",
        "Port could not be cast to integer value as 'abc'", (),
        "Port could not be cast to integer value as '***'",
    ),
    Scrub(
        "a quoted port holding a quote is masked whole",
        """Port could not be cast to integer value as "it's" (bad)""", (),
        "Port could not be cast to integer value as '***' (bad)",
    ),
    Scrub(
        "kombu's quoted database is masked to the end of the line",
        "Database is int between 0 and limit - 1, not et@cache:6390/9\nnext", (),
        "Database is int between 0 and limit - 1, not ***\nnext",
    ),
    Scrub(
        "py-amqp's int() of a port is masked",
        "invalid literal for int() with base 10: 'abc'", (),
        "invalid literal for int() with base 10: '***'",
    ),
    Scrub(
        "a bare password given as a secret",
        "AUTH failed for hunter22", ("hunter22",), "AUTH failed for ***",
    ),
    Scrub(
        "a password found in other letter case (urllib lower-cases host names)",
        "Error -2 connecting to secr3tpass:6379.", ("redis://Secr3tPass/xyz@cache/0",),
        "Error -2 connecting to ***:6379.",
    ),
    Scrub(
        "the percent-encoded and the decoded password are both removed",
        "as s3cr%2Fet99 or s3cr/et99", ("redis://:s3cr%2Fet99@cache/0",), "as *** or ***",
    ),
    Scrub(
        "None and empty secrets are ignored",
        "nothing to hide", (None, ""), "nothing to hide",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", SCRUBS, ids=[c.id for c in SCRUBS])
def test_redact(case: Scrub) -> None:
    assert redact(case.text, *case.secrets) == case.expected


# --- redact: real library errors for passwords with reserved characters -----------------------


@dataclass(frozen=True)
class Password:
    id: str
    password: str


PASSWORDS = [
    Password("slash", "s3cr/et99"),
    Password("at", "s3cr@et99"),
    Password("hash", "s3cr#et99"),
    Password("question mark", "s3cr?et99"),
    Password("percent", "s3cr%et99"),
    Password("percent and hex digits", "s3cr%41et99"),
    Password("colon", "s3cr:et99"),
    Password("semicolon", "s3cr;et99"),
    Password("space", "s3cr et99"),
    Password("brackets", "s3cr[et]99"),
    Password("unicode", "pässwörd/ünïcode"),
    Password("every reserved character", "abc/def@ghi#jkl?mno%pqr:stu;vwx yz1"),
    Password("reserved character first", "/s3cret99"),
]

URL_FORMS: list[tuple[str, Callable[[str], str]]] = [
    ("redis password only, as written", lambda p: f"redis://:{p}@127.0.0.1:6390/9"),
    ("redis user and password, as written", lambda p: f"redis://admin:{p}@127.0.0.1:6390/9"),
    ("redis password percent-encoded", lambda p: f"redis://:{quote(p, safe='')}@127.0.0.1/9"),
    ("rediss with a TLS option", lambda p: f"rediss://:{p}@127.0.0.1:1/0?ssl_cert_reqs=none"),
    ("amqp user and password, as written", lambda p: f"amqp://admin:{p}@127.0.0.1:5672//"),
    ("amqp percent-encoded", lambda p: f"amqp://admin:{quote(p, safe='')}@127.0.0.1//"),
    ("sentinel list", lambda p: f"sentinel://:{p}@127.0.0.1:26379;sentinel://127.0.0.2:26379"),
]


def _library_texts(url: str) -> Iterator[str]:
    """What redis-py, kombu, py-amqp and urllib really say about ``url``, connecting nowhere:
    the errors of reading it, and the URL kombu prints (Celery's banner, its log lines)."""
    attempts: list[Callable[[], Any]] = [
        lambda: urlsplit(url).port,
        lambda: parse_url(url),
        lambda: _kombu(url),
    ]
    if url.startswith("redis"):
        attempts.append(lambda: redis.Redis.from_url(url))
    for attempt in attempts:
        try:
            attempt()
        except Exception as error:  # whatever they raise is what gets reported
            yield str(error)
            yield repr(error)
    yield f"Cannot connect to {url}: Error 111. Trying again in 2.00 seconds..."  # Celery's
    yield f"Error while reading from socket: {url!r}"
    try:
        connection = _kombu(url)
    except Exception:  # its text is yielded above
        return
    yield connection.as_uri()
    yield repr(connection)
    yield connection.as_uri(include_password=True)
    virtual_host = connection.virtual_host
    if url.startswith(("redis", "sentinel")):
        try:
            _kombu_database(virtual_host)
        except ValueError as error:
            yield str(error)
    try:
        amqp.transport.to_host_port(f"{connection.hostname}:{connection.port}")
    except ValueError as error:
        yield str(error)


def _secret_parts(password: str) -> set[str]:
    """What must not show: the password (raw and decoded), its parts before and after the first
    reserved character, and every piece between reserved characters of MIN_FRAGMENT or more."""
    parts = {password}
    first = re.search(r"[/@#?%:;\[\] ]", password)
    if first:
        parts |= {password[: first.start()], password[first.end() :]}
    parts |= set(re.split(r"[/@#?%:;\[\] ]+", password))
    return {p.lower() for p in parts if len(p) >= MIN_FRAGMENT}


@pytest.mark.parametrize(("form", "make_url"), URL_FORMS, ids=[f for f, _ in URL_FORMS])
@pytest.mark.parametrize("case", PASSWORDS, ids=[c.id for c in PASSWORDS])
def test_redact_leaves_no_piece_of_the_password_in_real_library_texts(
    case: Password, form: str, make_url: Callable[[str], str]
) -> None:
    del form
    url = make_url(case.password)
    texts = list(_library_texts(url))
    secret = _secret_parts(case.password) | _secret_parts(quote(case.password, safe=""))
    leaking = [t for t in texts if any(part in t.lower() for part in secret)]
    assert leaking, "these texts do not quote the password: the test would prove nothing"
    for text in texts:
        cleaned = redact(text, url).lower()
        assert not [part for part in secret if part in cleaned], (text, cleaned)


def test_redact_cleans_the_issue_text() -> None:
    url = "redis://:s3cr/et99@redis.shop:6390/9"
    with pytest.raises(ValueError, match="s3cr") as raised:
        redis.Redis.from_url(url)
    assert redact(str(raised.value), url) == "Port could not be cast to integer value as '***'"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rediss://:pw@r:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/x", "rediss://:pw@r:6380/0"),
        ("rediss://r/0?ssl_cert_reqs=none&socket_timeout=3", "rediss://r/0?socket_timeout=3"),
        ("amqps://u:p@a:5671//", "amqps://u:p@a:5671//"),
        (
            "sentinel://s1:26379/0?ssl_cert_reqs=required;sentinel://s2:26379/0?SSL_CA_CERTS=/y",
            "sentinel://s1:26379/0;sentinel://s2:26379/0",
        ),
    ],
)
def test_without_tls_query_drops_only_the_ssl_parameters(url: str, expected: str) -> None:
    assert brokerurl.without_tls_query(url) == expected
