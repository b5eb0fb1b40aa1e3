"""Does the broker answer this pod? One connection and one greeting, within a deadline.

A liveness check asks this only when the state file says something is wrong (the worker has been
without its broker connection past the grace, or beat's tick is late), to tell the two cases apart:
the broker down for everyone (a restart cannot bring it back: pass, and let Celery reconnect) from
a broker that answers while this process stays cut off (a wedged connection: fail).

The URL is the one the container already has in ``$CELERY_BROKER_URL``, in Celery's form
(``;`` separates failover URLs: the broker counts as up if any answers):

* ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS; the query options
  ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
  ``ssl_check_hostname`` as Celery documents them; certificates are required unless the URL says
  otherwise), ``redis+socket:///path``: ``AUTH`` (with the username when there is one) and
  ``PING``. Only ``+PONG`` counts as an answer: a server that refuses the credentials
  (``-WRONGPASS``, ``-NOAUTH``) or is still loading its data (``-LOADING``) is one this worker
  could not use either, and a restart would not change that.
* ``amqp://``, ``amqps://`` (RabbitMQ): the AMQP 0-9-1 protocol header; the answer must be the
  server's ``Connection.Start`` method frame.
* ``sentinel://`` and any other scheme with a host and port: a TCP connection.

The broker's transport options (``$CELERY_BROKER_TRANSPORT_OPTIONS``) name keys, priorities and
sentinel's master: nothing this check needs.

Whatever it finds is said in one line that the kubelet shows in the pod's events, so it names only
scheme, host and port of each URL: never the URL itself, the username or the password, and never
an exception's own text (a library may put the URL in it), only words of this module. A URL this
module cannot parse is not tried: that counts as no answer.

Standard library only, imported by the checks only when they need it (``ssl`` only for TLS).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

URL_ENV = "CELERY_BROKER_URL"
DEFAULT_TIMEOUT_SECONDS = 2.0
"""For all the URLs together: well below the kubelet's probe timeout (5 s by default), which would
count a check still running as a failure."""

DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6379,
    "amqp": 5672,
    "pyamqp": 5672,
    "librabbitmq": 5672,
    "amqps": 5671,
    "sentinel": 26379,
}
REDIS_SCHEMES = ("redis", "rediss")
UNIX_SCHEMES = ("redis+socket", "socket")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
TLS_SCHEMES = ("rediss", "amqps")

AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
AMQP_CONNECTION_START = (1, 0, 10, 10)
"""A method frame (type 1) on channel 0, class ``connection`` (10), method ``start`` (10)."""


class UnusableUrlError(ValueError):
    """A broker URL this check cannot try; the message never quotes the URL."""


class Endpoint:
    """One broker URL, parsed: where to connect and how to greet the server there."""

    __slots__ = ("host", "password", "path", "port", "query", "scheme", "username")

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        username: bytes = b"",
        password: bytes = b"",
        path: str = "",
        query: dict[str, str] | None = None,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.path = path
        self.query = query or {}

    def where(self) -> str:
        """Scheme, host and port, as the kubelet may show them: no credentials, no database."""
        if self.scheme in UNIX_SCHEMES:
            return f"{self.scheme}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Endpoint({self.where()})"


def parse_urls(text: str) -> list[Endpoint]:
    """Every URL of a ``;``-separated failover list (Celery's form)."""
    urls = [part.strip() for part in text.split(";") if part.strip()]
    if not urls:
        raise UnusableUrlError(f"no broker URL in ${URL_ENV}")
    return [parse_url(url, index, len(urls)) for index, url in enumerate(urls)]


def parse_url(url: str, index: int = 0, count: int = 1) -> Endpoint:
    """One broker URL; userinfo percent-decoded, as kombu decodes it.

    Userinfo must be percent-encoded (kombu cannot read it otherwise either). A raw ``/``, ``?``
    or ``#`` in a password would end the host part early and make part of the password look like
    a host: an ``@`` after the host part reveals that, and such a URL is refused, unquoted.
    """
    which = f"broker URL {index + 1} of {count}" if count > 1 else "the broker URL"
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme.replace("+", "").isalnum():
        raise UnusableUrlError(f"{which} in ${URL_ENV} has no scheme")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in tail:
        raise UnusableUrlError(
            f"{which} ({scheme}) cannot be parsed: percent-encode '/', '?', '#' and '@' in its"
            " username and password"
        )
    userinfo, at, hostport = authority.rpartition("@")
    path, _, query = tail.partition("#")[0].partition("?")
    options = dict(parse_qsl(query))
    if scheme in UNIX_SCHEMES:
        if not path:
            raise UnusableUrlError(f"{which} ({scheme}) names no socket path")
        return Endpoint(scheme, "", 0, *_credentials(userinfo if at else ""), path, options)
    host, port = _host_port(hostport, scheme)
    if host is None or port is None:
        raise UnusableUrlError(f"{which} ({scheme}) has no usable host and port")
    return Endpoint(scheme, host, port, *_credentials(userinfo if at else ""), path, options)


def _credentials(userinfo: str) -> tuple[bytes, bytes]:
    username, _, password = userinfo.partition(":")
    return unquote_to_bytes(username), unquote_to_bytes(password)


def _host_port(hostport: str, scheme: str) -> tuple[str | None, int | None]:
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None, None
        raw_port = after[1:]
    else:
        host, _, raw_port = hostport.partition(":")
    host = unquote(host)
    if not host or not all(c.isalnum() or c in ".-_:%" for c in host):
        return None, None
    if not raw_port:
        return host, DEFAULT_PORTS.get(scheme)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        return None, None
    return host, int(raw_port)


def try_broker(text: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(whether any URL of ``text`` answered, what was found: the one that answered, or why each
    did not), within ``timeout`` seconds in all, whatever blocks (name resolution included)."""
    try:
        endpoints = parse_urls(text)
    except UnusableUrlError as error:
        return False, str(error)
    result: list[tuple[bool, str]] = []
    worker = threading.Thread(
        target=lambda: result.append(_try_all(endpoints, timeout)), daemon=True
    )
    worker.start()
    worker.join(timeout + 0.1)
    if not result:
        # Blocked where no socket timeout reaches (a name server that does not answer): the
        # daemon thread dies with the check's process.
        return False, f"{_names(endpoints)}: no answer within {timeout:g}s"
    return _scrubbed(result[0], endpoints)


def _try_all(endpoints: list[Endpoint], timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    failures = []
    for left, endpoint in zip(range(len(endpoints), 0, -1), endpoints, strict=True):
        share = max(0.05, (deadline - time.monotonic()) / left)
        problem = greet(endpoint, share)
        if problem is None:
            return True, f"{endpoint.where()} answered"
        failures.append(f"{endpoint.where()}: {problem}")
    return False, "; ".join(failures)


def _names(endpoints: list[Endpoint]) -> str:
    return ", ".join(endpoint.where() for endpoint in endpoints)


def _scrubbed(result: tuple[bool, str], endpoints: list[Endpoint]) -> tuple[bool, str]:
    """Belt and braces: no credential in the line, even if a host happens to spell one."""
    answered, message = result
    for endpoint in endpoints:
        for secret in (endpoint.username, endpoint.password):
            text = secret.decode("utf-8", "replace")
            if len(text) >= 3:
                message = message.replace(text, "***")
    return answered, message


def greet(endpoint: Endpoint, timeout: float) -> str | None:
    """None when the server at ``endpoint`` answered as a live broker; else why not, in words of
    this module."""
    started = time.monotonic()
    try:
        sock = _connect(endpoint, timeout)
    except (ValueError, OSError) as error:
        return _why(error, timeout)
    try:
        sock.settimeout(max(0.05, timeout - (time.monotonic() - started)))
        if endpoint.scheme in REDIS_SCHEMES or endpoint.scheme in UNIX_SCHEMES:
            return _redis_ping(sock, endpoint)
        if endpoint.scheme in AMQP_SCHEMES:
            return _amqp_hello(sock)
        return None  # a TCP connection is all this check knows how to ask of other brokers
    except (ValueError, OSError) as error:
        return _why(error, timeout)
    finally:
        sock.close()


def _connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    if endpoint.scheme in UNIX_SCHEMES:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint.path)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    if endpoint.scheme not in TLS_SCHEMES:
        return sock
    try:
        return _tls(sock, endpoint)
    except (ValueError, OSError):
        sock.close()
        raise


def _tls(sock: socket.socket, endpoint: Endpoint) -> socket.socket:
    """``sock`` wrapped in TLS as the URL's query asks (kombu's names), certificates required
    unless it says otherwise: the check sends the password through it."""
    import ssl  # noqa: PLC0415 (tens of milliseconds, for TLS brokers only)

    query = endpoint.query
    modes = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    mode = modes.get(query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_"))
    if mode is None:
        raise ValueError("ssl_cert_reqs")
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    context.check_hostname = mode != ssl.CERT_NONE and (
        query.get("ssl_check_hostname", "true").lower() != "false"
    )
    context.verify_mode = mode
    if query.get("ssl_certfile"):
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    return context.wrap_socket(sock, server_hostname=endpoint.host)


def _redis_ping(sock: socket.socket, endpoint: Endpoint) -> str | None:
    commands = []
    if endpoint.password:
        user = [endpoint.username] if endpoint.username else []
        commands.append(resp_command([b"AUTH", *user, endpoint.password]))
    commands.append(resp_command([b"PING"]))
    sock.sendall(b"".join(commands))
    replies = _read_lines(sock, len(commands))
    return redis_verdict(replies)


def resp_command(words: list[bytes]) -> bytes:
    """One command in RESP, as an array of bulk strings (any byte may appear in a password)."""
    parts = [b"*%d\r\n" % len(words)]
    parts += [b"$%d\r\n%s\r\n" % (len(word), word) for word in words]
    return b"".join(parts)


def redis_verdict(replies: list[bytes]) -> str | None:
    """None when the last reply is ``+PONG``; else what the server said instead, as its error
    code only (``WRONGPASS``, ``NOAUTH``, ``LOADING``): never the rest of an error line."""
    if replies and replies[-1] == b"+PONG":
        return None
    codes = [_error_code(reply) for reply in replies if reply.startswith(b"-")]
    if codes:
        return f"answered {' then '.join(codes)}, not PONG"
    return "answered, but not PONG" if replies else "closed without answering"


def _error_code(reply: bytes) -> str:
    word = reply[1:].split(b" ", 1)[0]
    return word.decode("ascii") if word.isalpha() and word.isupper() else "an error"


def _read_lines(sock: socket.socket, count: int) -> list[bytes]:
    """The first ``count`` replies (each one line: simple strings and errors are), or as many
    complete ones as came before the server closed the connection."""
    data = b""
    while data.count(b"\r\n") < count and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[: min(count, data.count(b"\r\n"))]


def _amqp_hello(sock: socket.socket) -> str | None:
    sock.sendall(AMQP_PROTOCOL_HEADER)
    data = b""
    while len(data) < 11:
        chunk = sock.recv(11 - len(data))
        if not chunk:
            break
        data += chunk
    return amqp_verdict(data)


def amqp_verdict(data: bytes) -> str | None:
    """None when ``data`` begins a ``Connection.Start`` frame (type, channel, size, class,
    method); a server that sends its own protocol header back speaks another version."""
    if len(data) >= 11:
        found = (
            data[0],
            int.from_bytes(data[1:3]),
            *(int.from_bytes(data[i : i + 2]) for i in (7, 9)),
        )
        if found == AMQP_CONNECTION_START:
            return None
    if data.startswith(b"AMQP"):
        return "answered with another AMQP protocol version"
    return "answered, but not with AMQP's Connection.Start" if data else "closed without answering"


def _why(error: BaseException, timeout: float) -> str:
    """The cause of ``error`` in this module's words: an exception's text may hold the URL."""
    if isinstance(error, socket.gaierror):
        return "host name not resolved"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:.1f}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "connection closed before it answered"
    ssl = sys.modules.get("ssl")  # loaded only if TLS was tried
    if ssl is not None and isinstance(error, ssl.SSLCertVerificationError):
        return "TLS certificate not accepted (see ssl_ca_certs, ssl_check_hostname)"
    if ssl is not None and isinstance(error, ssl.SSLError):
        reason = error.reason
        known = isinstance(reason, str) and reason.replace("_", "").isalnum()
        return f"TLS failed ({reason})" if known else "TLS failed"
    if isinstance(error, FileNotFoundError):
        return "a file named in the URL is missing"
    if isinstance(error, ValueError):
        return "unusable TLS options in the URL"
    code = getattr(error, "errno", None)
    return os.strerror(code).lower() if isinstance(code, int) else "connection failed"
