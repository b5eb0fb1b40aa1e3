"""Broker URLs: parsed as kombu reads them, compared, and kept out of every message (pure).

A broker URL lives in a Secret because it usually carries a password, and it leaks in two ways.
A library that mis-splits a URL whose password holds an unencoded ``/``, ``?`` or ``#`` quotes a
piece of that password in its error (urllib's ``Port could not be cast to integer value as
'<password prefix>'``, raised inside redis-py and kombu alike); and any text that quotes the URL
quotes the password. :func:`parse` reads a URL the way kombu does (which is what Celery uses),
refuses what some library would read differently, and never quotes the URL in an error;
:func:`redact` scrubs every text that came from a broker library before it reaches a status
condition, an Event, a log line or a metric.

Standard library only, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl, quote, unquote

REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "sentinel"})
"""kombu's Redis transports: the path is a database number."""
AMQP_SCHEMES: Final = frozenset({"amqp", "amqps", "pyamqp"})
"""kombu's py-amqp transports: the path is a virtual host."""
SUPPORTED_SCHEMES: Final = REDIS_SCHEMES | AMQP_SCHEMES
"""What :func:`parse` reads. Which of them the operator can talk to is the caller's business
(:func:`check_supported`)."""
TLS_SCHEMES: Final = frozenset({"rediss", "amqps"})

DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "redis": 6379,
        "rediss": 6379,
        "sentinel": 26379,
        "amqp": 5672,
        "pyamqp": 5672,
        "amqps": 5671,
    }
)
"""kombu's: each transport's ``default_port`` (``default_ssl_port`` for amqps)."""
DEFAULT_DATABASE: Final = 0
DEFAULT_VIRTUAL_HOST: Final = "/"
"""kombu's for ``amqp://host``, ``amqp://host/`` and ``amqp://host//`` alike."""

MIN_FRAGMENT: Final = 3
""":func:`redact` removes every piece of a password between reserved characters that is at least
this long. A shorter piece says little about the password and would wipe ordinary words from
the text; the whole password is removed whatever its length."""

KNOWN_SCHEMES: Final = frozenset(
    {
        *SUPPORTED_SCHEMES,
        "librabbitmq", "confluentkafka", "kafka", "memory", "sqs", "mongodb", "zookeeper",
        "sqlalchemy", "sqla", "slmq", "filesystem", "qpid", "consul", "etcd",
        "azurestoragequeues", "azureservicebus", "pyro", "gcpubsub", "pgmq", "unix", "socket",
        "redis+socket", "rediss+socket", "valkey", "valkeys", "http", "https",
    }
)  # fmt: skip
"""Scheme words an error may echo: kombu's transport aliases and a few common others. Anything
else before ``://`` could be a piece of a mangled secret, so an error does not repeat it."""

# Reasons: a short word per kind of error, for a condition reason or a metric label.
EMPTY: Final = "Empty"
NO_SCHEME: Final = "NoScheme"
UNSUPPORTED_SCHEME: Final = "UnsupportedScheme"
UNPARSEABLE: Final = "Unparseable"
INVALID_PERCENT_ENCODING: Final = "InvalidPercentEncoding"
MISSING_HOST: Final = "MissingHost"
INVALID_HOST: Final = "InvalidHost"
INVALID_PORT: Final = "InvalidPort"
INVALID_DATABASE: Final = "InvalidDatabase"
INVALID_FAILOVER: Final = "InvalidFailover"

UNENCODED_MESSAGE: Final = (
    "the URL cannot be parsed; characters such as / @ # ? % : ; in a user name or password "
    "must be percent-encoded (e.g. %2F for /)"
)
"""Said for every URL some library would split in the wrong place (an unencoded ``/ ? # [ ]``
or a second ``@`` in the user information, a ``;`` that cuts a password into two URLs)."""


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used. ``str()`` never contains any part of the URL other
    than a scheme from :data:`KNOWN_SCHEMES`; ``reason`` is one of the reason constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker URL points, percent-decoded. ``repr()`` and ``str()`` show no secret."""

    scheme: str
    """Lower-case, one of :data:`SUPPORTED_SCHEMES`."""
    hosts: tuple[tuple[str, int], ...]
    """``(host, port)`` per URL of a ``;``-separated failover list (one for a plain URL, one per
    sentinel for ``sentinel://``); ports defaulted, hosts lower-case, IPv6 without brackets."""
    database: int | None = None
    """The Redis database number (redis, rediss, sentinel); None for AMQP."""
    virtual_host: str | None = None
    """The AMQP virtual host (``/`` unless the path names one); None for Redis."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, hash=False
    )
    """The URL's query parameters (e.g. ``ssl_cert_reqs``), decoded."""
    url: str = field(default="", repr=False, compare=False)
    """The URL for an adapter that connects: as given, but for surrounding whitespace and a
    scheme in capitals (kombu reads ``REDIS://``, redis-py refuses it)."""

    @property
    def tls(self) -> bool:
        """Whether the scheme itself asks for TLS (``rediss``, ``amqps``)."""
        return self.scheme in TLS_SCHEMES

    @property
    def display(self) -> str:
        """``scheme://host:port[,host:port…]/database-or-vhost``: no user, password or query."""
        hosts = ",".join(_host_port(host, port) for host, port in self.hosts)
        if self.database is not None:
            return f"{self.scheme}://{hosts}/{self.database}"
        if self.virtual_host is not None:
            vhost = self.virtual_host
            return f"{self.scheme}://{hosts}/{vhost if vhost == '/' else quote(vhost, safe='')}"
        return f"{self.scheme}://{hosts}"

    def __str__(self) -> str:
        return self.display


@dataclass(frozen=True)
class BrokerIdentity:
    """What makes two clusters' brokers the same one, for sharing a connection: transport,
    hosts, database or virtual host, credentials and TLS options. Hashable; its ``repr()``
    leaves the password out. The caller adds the transport options (key prefix) it needs."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    database: int | None
    virtual_host: str | None
    username: str | None
    password: str | None = field(repr=False)
    tls_options: tuple[tuple[str, str], ...]


def parse(url: str) -> BrokerAddress:
    """The address in ``url``, read as kombu reads it; BrokerUrlError when it cannot be used.

    A ``;``-separated failover list (Celery's, and the usual ``sentinel://`` form) gives one
    address with several hosts: its URLs must differ only in host and port, except that the
    later ``sentinel://`` URLs may leave out what kombu takes from the first anyway.
    """
    text = url.strip()
    if not text:
        raise BrokerUrlError(EMPTY, "the URL is empty")
    if _CONTROL.search(text):
        raise BrokerUrlError(
            UNPARSEABLE, "the URL contains a line break or another control character"
        )
    entries = [entry.strip() for entry in text.split(";")]
    if len(entries) > 1 and any("://" not in entry for entry in entries[1:] if entry):
        raise BrokerUrlError(UNPARSEABLE, UNENCODED_MESSAGE)  # a ';' inside a password
    if not all(entries):
        raise BrokerUrlError(
            INVALID_FAILOVER, "the failover list (separated by ;) has an empty entry"
        )
    first, *others = [_parse_entry(entry) for entry in entries]
    for other in others:
        if other.scheme != first.scheme:
            raise BrokerUrlError(
                INVALID_FAILOVER,
                "the URLs of a failover list (separated by ;) must share one scheme",
            )
        if not (first.scheme == "sentinel" and other.bare) and other.meaning != first.meaning:
            raise BrokerUrlError(
                INVALID_FAILOVER,
                "the URLs of a failover list (separated by ;) may differ only in host and port",
            )
    return BrokerAddress(
        scheme=first.scheme,
        hosts=(first.host, *(other.host for other in others)),
        database=first.database,
        virtual_host=first.virtual_host,
        username=first.username,
        password=first.password,
        query=MappingProxyType(first.query),
        url=";".join(entry.url for entry in (first, *others)),
    )


def check_supported(address: BrokerAddress, supported: Collection[str]) -> None:
    """BrokerUrlError (``UnsupportedScheme``) unless the caller can use ``address.scheme``."""
    if address.scheme not in supported:
        raise BrokerUrlError(
            UNSUPPORTED_SCHEME,
            f"broker URL scheme {address.scheme!r} is not supported "
            f"(supported: {', '.join(sorted(supported))})",
        )


def identity(address: BrokerAddress) -> BrokerIdentity:
    """The key under which clusters on the same broker may share one connection.

    ``pyamqp`` and ``amqp`` are one transport; ``redis`` and ``rediss`` are not (TLS). Query
    options other than TLS ones (``ssl*``) tune a client, not which broker it reaches.
    """
    return BrokerIdentity(
        scheme="amqp" if address.scheme == "pyamqp" else address.scheme,
        hosts=address.hosts,
        database=address.database,
        virtual_host=address.virtual_host,
        username=address.username,
        password=address.password,
        tls_options=tuple(sorted((k, v) for k, v in address.query.items() if k.startswith("ssl"))),
    )


def without_tls_query(url: str) -> str:
    """``url`` (each URL of a ``;`` list) without its ``ssl_*`` query parameters, for a client
    given the TLS options some other way (kombu with Celery's ``broker_use_ssl``): kombu would
    otherwise take the URL's ``ssl_ca_certs``, a path that exists in the pods only."""
    entries = []
    for entry in url.strip().split(";"):
        base, mark, query = entry.partition("?")
        kept = "&".join(
            part for part in query.split("&") if part and not part.lower().startswith("ssl")
        )
        entries.append(f"{base}?{kept}" if mark and kept else base)
    return ";".join(entries)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` (from a broker library's error) with no secret left in it.

    ``secrets`` are the broker URLs (and any other secret) the text may quote; each URL need not
    parse. Removed, case-insensitively: every whole secret (a URL that parses becomes its
    :attr:`BrokerAddress.display`); each password in them, raw, percent-decoded and encoded,
    and every piece of it between reserved characters at least :data:`MIN_FRAGMENT` long (what
    a mis-splitting parser quotes); the values urllib, kombu and py-amqp quote from a URL they
    could not read; and in any URL left in the text, its user information (``scheme://***@``)
    and its query string.
    """
    masked: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for whole in sorted({secret, secret.strip()} - {""}, key=len, reverse=True):
            shown = _display_or_mask(whole).replace("\\", "\\\\")  # a literal replacement
            text = re.sub(re.escape(whole), shown, text, flags=re.IGNORECASE)
        for candidate in _password_candidates(secret.strip()):
            masked |= _needles(candidate)
    if masked:
        needles = sorted(masked, key=len, reverse=True)
        pattern = "|".join(re.escape(needle) for needle in needles)
        text = re.sub(pattern, _MASK, text, flags=re.IGNORECASE)
    for echo, keep in _ECHOES:
        text = echo.sub(keep, text)
    text = _URL_USERINFO.sub(rf"\g<scheme>{_MASK}@", text)
    return _URL_QUERY.sub(rf"\g<url>?{_MASK}", text)


# --- parsing ---------------------------------------------------------------------------------

_MASK: Final = "***"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_HOST_NAME = re.compile(
    r"[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?)*\.?"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SPLITS_USERINFO = re.compile(r"[@/?#\[\]]")
"""Characters in the user information that make urlsplit (and so redis-py and kombu) cut the
URL elsewhere, or refuse it as a broken IPv6 literal (``[ ]``)."""


@dataclass(frozen=True)
class _Entry:
    """One URL of a failover list (of one, mostly), decoded."""

    scheme: str
    host: tuple[str, int]
    username: str | None
    password: str | None
    database: int | None
    virtual_host: str | None
    query: dict[str, str]
    url: str
    """The entry with its scheme in lower case."""
    bare: bool
    """Only scheme, host and port: how the later URLs of a sentinel list are usually written
    (kombu takes credentials, database and options from the first one)."""

    @property
    def meaning(self) -> tuple[object, ...]:
        """All but the host: what the URLs of one failover list must agree on."""
        return (self.username, self.password, self.database, self.virtual_host, self.query)


def _parse_entry(entry: str) -> _Entry:
    scheme_end = entry.find("://")
    if scheme_end < 0 or not _SCHEME.fullmatch(entry[:scheme_end]):
        raise BrokerUrlError(
            NO_SCHEME, "the URL has no scheme; it must start with one such as redis:// or amqp://"
        )
    scheme = entry[:scheme_end].lower()
    if scheme not in SUPPORTED_SCHEMES:
        named = f" {scheme!r}" if scheme in KNOWN_SCHEMES else ""
        raise BrokerUrlError(
            UNSUPPORTED_SCHEME,
            f"broker URL scheme{named} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_SCHEMES))})",
        )
    rest = entry[scheme_end + 3 :]
    authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo: str | None = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
    if "@" in tail or (userinfo is not None and _SPLITS_USERINFO.search(userinfo)):
        raise BrokerUrlError(UNPARSEABLE, UNENCODED_MESSAGE)
    if _BAD_PERCENT.search(rest):
        raise BrokerUrlError(
            INVALID_PERCENT_ENCODING,
            "the URL has a % that is not followed by two hex digits; write a literal % as %25",
        )
    if "#" in tail:
        raise BrokerUrlError(UNPARSEABLE, "the URL must not have a fragment (#…)")
    path, _, raw_query = tail.partition("?")
    host = _host_and_port(authority, DEFAULT_PORTS[scheme])
    username, password = _credentials(userinfo)
    query = _query(raw_query)
    database: int | None = None
    virtual_host: str | None = None
    if scheme in REDIS_SCHEMES:
        if "db" in query:
            raise BrokerUrlError(
                INVALID_DATABASE,
                "the URL's Redis database belongs in its path (e.g. /0), not in ?db=",
            )
        database = _database(path)
    else:
        virtual_host = _decode(path[1:]) or DEFAULT_VIRTUAL_HOST
    return _Entry(
        scheme=scheme,
        host=host,
        username=username,
        password=password,
        database=database,
        virtual_host=virtual_host,
        query=query,
        url=f"{scheme}://{rest}",
        bare=userinfo is None and not path.strip("/") and not raw_query,
    )


def _host_and_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise BrokerUrlError(INVALID_HOST, _INVALID_HOST_MESSAGE)
        literal, after = authority[1:close], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise BrokerUrlError(INVALID_HOST, _INVALID_HOST_MESSAGE)
        try:
            host = ipaddress.IPv6Address(_decode(literal)).compressed
        except ValueError:
            raise BrokerUrlError(INVALID_HOST, _INVALID_HOST_MESSAGE) from None
        port_text = after[1:]
    else:
        raw_host, _, port_text = authority.partition(":")
        host = _decode(raw_host).lower()
        if not host:
            raise BrokerUrlError(MISSING_HOST, "the URL names no host")
        if len(host) > 253 or not _HOST_NAME.fullmatch(host):
            raise BrokerUrlError(INVALID_HOST, _INVALID_HOST_MESSAGE)
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise BrokerUrlError(INVALID_PORT, "the URL's port must be a number from 1 to 65535")
    return host, int(port_text)


_INVALID_HOST_MESSAGE: Final = "the URL's host is not a host name or an IP address"


def _credentials(userinfo: str | None) -> tuple[str | None, str | None]:
    """kombu's: an empty user name or password is none."""
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    return _decode(user) or None, (_decode(password) or None) if colon else None


def _database(path: str) -> int:
    """kombu's ``_prepare_virtual_host``: no path or ``/`` is 0, one more leading ``/`` is
    dropped; anything but digits is an error (kombu's ``int()`` would also take ``+1`` or
    Arabic-Indic digits; redis-py silently uses 0 for what it cannot read)."""
    number = _decode(path[1:])
    if number in ("", "/"):
        return DEFAULT_DATABASE
    number = number.removeprefix("/")
    if not (number.isascii() and number.isdigit()):
        raise BrokerUrlError(
            INVALID_DATABASE, "the URL's Redis database must be a number of 0 or more (e.g. /0)"
        )
    return int(number)


def _query(query: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(query, errors="strict"))
    except UnicodeDecodeError:
        raise _not_utf8() from None


def _decode(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _not_utf8() from None


def _not_utf8() -> BrokerUrlError:
    return BrokerUrlError(
        INVALID_PERCENT_ENCODING, "the URL's percent-encoded bytes are not valid UTF-8"
    )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- redaction -------------------------------------------------------------------------------

_RESERVED = re.compile(r"[/@#?:;%&=+\[\],'\"\\\s]+")
"""Where a parser may cut a password: URL delimiters, quoting and whitespace."""

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?:(?!://)[^\n])*@")
"""A URL's user information: up to the last ``@`` on the line before any other URL, since an
unencoded password may hold ``@``, ``/`` or spaces. It may mask a host too, never too little."""
_URL_QUERY = re.compile(r"(?P<url>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>?]*)\?[^\s'\"<>]*")

_QUOTED = r"(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")"
_ECHOES: Final = (
    # urllib.parse (under redis-py's and kombu's URL parsing), the bug this module exists for
    (re.compile(rf"(Port could not be cast to integer value as ){_QUOTED}"), rf"\1'{_MASK}'"),
    # kombu's Redis transport, about the path of a URL split in the wrong place
    (re.compile(r"(Database is int between 0 and limit - 1, not ).*"), rf"\1{_MASK}"),
    # py-amqp's host:port parsing, and any int() or float() of a piece of a URL
    (re.compile(rf"(invalid literal for int\(\) with base \d+: ){_QUOTED}"), rf"\1'{_MASK}'"),
    (re.compile(rf"(could not convert string to float: ){_QUOTED}"), rf"\1'{_MASK}'"),
)
"""Library errors that quote a piece of a URL they could not read: the piece is masked."""


def _display_or_mask(secret: str) -> str:
    try:
        return parse(secret).display
    except BrokerUrlError:
        return _MASK


def _password_candidates(secret: str) -> Iterator[str]:
    """The password of each URL in ``secret`` as written (still percent-encoded), also when it
    does not parse: everything between ``scheme://`` and the URL's last ``@``, after the first
    ``:``. A user name stands in when there is no password (``redis://secret@host``). A secret
    that is no URL is a password itself."""
    if "://" not in secret:
        yield secret
        return
    entries: list[str] = []
    for piece in secret.split(";"):  # a piece without a scheme is the rest of a password
        if "://" in piece or not entries:
            entries.append(piece)
        else:
            entries[-1] += ";" + piece
    for entry in entries:
        userinfo, at, _ = entry[entry.find("://") + 3 :].rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            yield password if colon and password else user


def _needles(password: str) -> set[str]:
    """Every form of ``password`` a library may print, and its pieces of MIN_FRAGMENT or more."""
    if not password:
        return set()
    decoded = unquote(password)
    forms = {password, decoded, quote(decoded, safe=""), quote(decoded), quote(password, safe="")}
    forms |= {repr(form)[1:-1] for form in forms}
    needles = {form for form in forms if form}
    for form in forms:
        needles |= {piece for piece in _RESERVED.split(form) if len(piece) >= MIN_FRAGMENT}
    return needles
