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
* ``sentinel://[user:password@]host[:port][/db]`` (Redis Sentinel; each URL of the list is one
  sentinel): ``SENTINEL get-master-addr-by-name`` with the ``master_name`` of the broker's
  transport options (``$CELERY_BROKER_TRANSPORT_OPTIONS``, JSON, kombu's names), then ``AUTH``
  and ``PING`` to that master with the URL's credentials, which kombu gives to the master and
  never to the sentinels. A sentinel that wants a password of its own gets ``sentinel_kwargs``'
  ``password`` (and ``username``) from the same options, as kombu gives them. The next sentinel
  is asked when one does not answer, does not know the master, or names a master that does not
  answer (a sentinel may name the old master for a moment after a failover). Sentinels and
  master are greeted without TLS: TLS there is an app setting (``broker_use_ssl``,
  ``sentinel_kwargs``) the check does not read.
* any other scheme with a host and port: a TCP connection.

``$CELERY_BROKER_CA_FILE``, when set, names a CA bundle for the TLS schemes whose URL names no
``ssl_ca_certs`` (a file the operator mounts into the pod): the check trusts it alone, as it
would the URL's.

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
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

URL_ENV = "CELERY_BROKER_URL"
TRANSPORT_OPTIONS_ENV = "CELERY_BROKER_TRANSPORT_OPTIONS"
CA_FILE_ENV = "CELERY_BROKER_CA_FILE"
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
SENTINEL_SCHEME = "sentinel"
TLS_SCHEMES = ("rediss", "amqps")

AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
AMQP_CONNECTION_START = (1, 0, 10, 10)
"""A method frame (type 1) on channel 0, class ``connection`` (10), method ``start`` (10)."""


class UnusableUrlError(ValueError):
    """A broker URL this check cannot try (or, for sentinel, its transport options); the message
    never quotes either."""


class MissingCaFileError(FileNotFoundError):
    """The CA bundle ``$CELERY_BROKER_CA_FILE`` names is not there."""


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
        return f"{self.scheme}://{self.address()}"

    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Endpoint({self.where()})"


class BrokerOptions:
    """What the check takes from the container's environment besides the URL."""

    __slots__ = ("ca_file", "master_name", "problem", "sentinel_password", "sentinel_username")

    def __init__(
        self,
        ca_file: str = "",
        master_name: str = "",
        sentinel_username: bytes = b"",
        sentinel_password: bytes = b"",
        problem: str = "",
    ) -> None:
        self.ca_file = ca_file
        """``$CELERY_BROKER_CA_FILE``: the CA bundle for TLS URLs that name none."""
        self.master_name = master_name
        self.sentinel_username = sentinel_username
        self.sentinel_password = sentinel_password
        self.problem = problem
        """Why the transport options cannot be used (for sentinel URLs): "" when they can."""

    def __repr__(self) -> str:
        return f"BrokerOptions(master_name={self.master_name!r}, ca_file={self.ca_file!r})"


def read_options(environ: Mapping[str, str], sentinel: bool) -> BrokerOptions:
    """The check's options from ``environ``; the transport options only for ``sentinel`` URLs
    (nothing else needs them, and a JSON parser costs milliseconds)."""
    ca_file = environ.get(CA_FILE_ENV, "").strip()
    raw = environ.get(TRANSPORT_OPTIONS_ENV, "").strip() if sentinel else ""
    if not raw:
        return BrokerOptions(ca_file)
    import json  # noqa: PLC0415 (for sentinel URLs only)

    try:
        options = json.loads(raw)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        return BrokerOptions(ca_file, problem=f"${TRANSPORT_OPTIONS_ENV} is not a JSON object")
    master_name = options.get("master_name", "")
    kwargs = options.get("sentinel_kwargs") or {}
    if not isinstance(master_name, str) or not isinstance(kwargs, dict):
        return BrokerOptions(
            ca_file, problem=f"master_name or sentinel_kwargs in ${TRANSPORT_OPTIONS_ENV} unusable"
        )
    username, password = kwargs.get("username") or "", kwargs.get("password") or ""
    if not isinstance(username, str) or not isinstance(password, str):
        return BrokerOptions(
            ca_file, problem=f"sentinel_kwargs' credentials in ${TRANSPORT_OPTIONS_ENV} unusable"
        )
    return BrokerOptions(ca_file, master_name, username.encode(), password.encode())


def options_problem(endpoints: list[Endpoint], options: BrokerOptions) -> str:
    """Why sentinel URLs cannot be tried with these options ("" if they can, or if there are
    none): kombu refuses a sentinel URL without ``master_name``, so the worker cannot work
    either."""
    if not any(endpoint.scheme == SENTINEL_SCHEME for endpoint in endpoints):
        return ""
    if options.problem:
        return options.problem
    if not options.master_name:
        return f"sentinel URLs need master_name in ${TRANSPORT_OPTIONS_ENV}"
    return ""


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
    if not _usable_host(host):
        return None, None
    if not raw_port:
        return host, DEFAULT_PORTS.get(scheme)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        return None, None
    return host, int(raw_port)


def _usable_host(host: str) -> bool:
    """A host name or address, nothing that could be part of a credential or a command."""
    return bool(host) and all(c.isalnum() or c in ".-_:%" for c in host)


def try_broker(
    text: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, environ: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """(whether any URL of ``text`` answered, what was found: the one that answered, or why each
    did not), within ``timeout`` seconds in all, whatever blocks (name resolution included).

    ``environ`` (``os.environ`` by default) gives the transport options and the CA file."""
    try:
        endpoints = parse_urls(text)
    except UnusableUrlError as error:
        return False, str(error)
    env = os.environ if environ is None else environ
    options = read_options(env, any(e.scheme == SENTINEL_SCHEME for e in endpoints))
    problem = options_problem(endpoints, options)
    if problem:
        return False, problem
    result: list[tuple[bool, str]] = []
    worker = threading.Thread(
        target=lambda: result.append(_try_all(endpoints, timeout, options)), daemon=True
    )
    worker.start()
    worker.join(timeout + 0.1)
    if not result:
        # Blocked where no socket timeout reaches (a name server that does not answer): the
        # daemon thread dies with the check's process.
        return False, f"{_names(endpoints)}: no answer within {timeout:g}s"
    return _scrubbed(result[0], endpoints, (options.sentinel_username, options.sentinel_password))


def _try_all(endpoints: list[Endpoint], timeout: float, options: BrokerOptions) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    failures = []
    for left, endpoint in zip(range(len(endpoints), 0, -1), endpoints, strict=True):
        share = max(0.05, (deadline - time.monotonic()) / left)
        problem, master = _greet(endpoint, share, options)
        if problem is None:
            also = f", and so did its master {master}" if master else ""
            return True, f"{endpoint.where()} answered{also}"
        failures.append(f"{endpoint.where()}: {_via(master)}{problem}")
    return False, "; ".join(failures)


def _via(master: str) -> str:
    return f"master {master}: " if master else ""


def _names(endpoints: list[Endpoint]) -> str:
    return ", ".join(endpoint.where() for endpoint in endpoints)


def _scrubbed(
    result: tuple[bool, str], endpoints: list[Endpoint], others: tuple[bytes, ...] = ()
) -> tuple[bool, str]:
    """Belt and braces: no credential in the line, even if a host happens to spell one."""
    answered, message = result
    hidden = [s for e in endpoints for s in (e.username, e.password)] + list(others)
    for secret in hidden:
        text = secret.decode("utf-8", "replace")
        if len(text) >= 3:
            message = message.replace(text, "***")
    return answered, message


def greet(endpoint: Endpoint, timeout: float, options: BrokerOptions | None = None) -> str | None:
    """None when the server at ``endpoint`` answered as a live broker; else why not, in words of
    this module."""
    problem, master = _greet(endpoint, timeout, options or BrokerOptions())
    return None if problem is None else f"{_via(master)}{problem}"


def _greet(endpoint: Endpoint, timeout: float, options: BrokerOptions) -> tuple[str | None, str]:
    """(None or why not, as :func:`greet`; the address of the master a sentinel named, or "")."""
    if endpoint.scheme != SENTINEL_SCHEME:
        return _talk(endpoint, timeout, options, _hello)[0], ""
    unusable = options_problem([endpoint], options)
    if unusable:
        return unusable, ""
    started = time.monotonic()
    problem, named = _talk(endpoint, timeout, options, lambda s, _: _ask_sentinel(s, options))
    if named is None:
        return problem, ""
    # kombu gives the URL's credentials to the master (the sentinels get sentinel_kwargs').
    master = Endpoint("redis", named.host, named.port, endpoint.username, endpoint.password)
    left = max(0.05, timeout - (time.monotonic() - started))
    return _talk(master, left, options, _hello)[0], master.address()


Exchange = Callable[[socket.socket, Endpoint], tuple[str | None, Endpoint | None]]
"""What to say to a server once connected: (None or why not, a master a sentinel named)."""


def _talk(
    endpoint: Endpoint, timeout: float, options: BrokerOptions, exchange: Exchange
) -> tuple[str | None, Endpoint | None]:
    """Connect to ``endpoint`` (TLS if its scheme says so) and run ``exchange``, all within
    ``timeout``; a connection or exchange that fails is said in this module's words."""
    started = time.monotonic()
    try:
        sock = _connect(endpoint, timeout, options)
    except (ValueError, OSError) as error:
        return _why(error, timeout, _ca_from_env(endpoint, options)), None
    try:
        sock.settimeout(max(0.05, timeout - (time.monotonic() - started)))
        return exchange(sock, endpoint)
    except (ValueError, OSError) as error:
        return _why(error, timeout, _ca_from_env(endpoint, options)), None
    finally:
        sock.close()


def _hello(sock: socket.socket, endpoint: Endpoint) -> tuple[str | None, None]:
    if endpoint.scheme in REDIS_SCHEMES or endpoint.scheme in UNIX_SCHEMES:
        return _redis_ping(sock, endpoint), None
    if endpoint.scheme in AMQP_SCHEMES:
        return _amqp_hello(sock), None
    return None, None  # a TCP connection is all this check knows how to ask of other brokers


def _ca_from_env(endpoint: Endpoint, options: BrokerOptions) -> bool:
    """Whether a TLS connection to ``endpoint`` trusts the CA of ``$CELERY_BROKER_CA_FILE``."""
    return (
        endpoint.scheme in TLS_SCHEMES
        and not endpoint.query.get("ssl_ca_certs")
        and bool(options.ca_file)
    )


def _connect(endpoint: Endpoint, timeout: float, options: BrokerOptions) -> socket.socket:
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
        return _tls(sock, endpoint, options)
    except (ValueError, OSError):
        sock.close()
        raise


def _tls(sock: socket.socket, endpoint: Endpoint, options: BrokerOptions) -> socket.socket:
    """``sock`` wrapped in TLS as the URL's query asks (kombu's names), certificates required
    unless it says otherwise: the check sends the password through it. The CA is the URL's
    ``ssl_ca_certs``, else ``$CELERY_BROKER_CA_FILE``, else the system's."""
    import ssl  # noqa: PLC0415 (tens of milliseconds, for TLS brokers only)

    query = endpoint.query
    modes = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    mode = modes.get(query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_"))
    if mode is None:
        raise ValueError("ssl_cert_reqs")
    ca_file = query.get("ssl_ca_certs") or None
    if ca_file is None and options.ca_file:
        if not os.path.isfile(options.ca_file):
            raise MissingCaFileError(options.ca_file)
        ca_file = options.ca_file
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = mode != ssl.CERT_NONE and (
        query.get("ssl_check_hostname", "true").lower() != "false"
    )
    context.verify_mode = mode
    if query.get("ssl_certfile"):
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    return context.wrap_socket(sock, server_hostname=endpoint.host)


def _ask_sentinel(
    sock: socket.socket, options: BrokerOptions
) -> tuple[str | None, Endpoint | None]:
    """(None, the master the sentinel on ``sock`` names) or (why it named none, None)."""
    commands = []
    if options.sentinel_password:
        user = [options.sentinel_username] if options.sentinel_username else []
        commands.append(resp_command([b"AUTH", *user, options.sentinel_password]))
    ask = [b"SENTINEL", b"get-master-addr-by-name", options.master_name.encode()]
    commands.append(resp_command(ask))
    sock.sendall(b"".join(commands))
    return sentinel_verdict(_read_replies(sock, len(commands)), options.master_name)


Reply = bytes | list[bytes | None] | None
"""A RESP reply: a simple string, error or integer as its line (``+OK``, ``-ERR ...``), a bulk
string's bytes inside an array, an array of bulk strings, or None (a null array or string)."""


def parse_replies(data: bytes, count: int) -> list[Reply]:
    """The first ``count`` complete replies in ``data`` (fewer if it ends sooner)."""
    replies: list[Reply] = []
    position = 0
    while len(replies) < count:
        parsed = _parse_reply(data, position)
        if parsed is None:
            break
        reply, position = parsed
        replies.append(reply)
    return replies


def _parse_reply(data: bytes, position: int) -> tuple[Reply, int] | None:
    """(one reply, where the next begins), or None if ``data`` ends before the reply does.
    Arrays hold bulk strings only here (the sentinel's answer); any other element is kept as its
    line."""
    line, position = _line(data, position)
    if line is None:
        return None
    if line[:1] not in (b"*", b"$") or not line[1:].lstrip(b"-").isdigit():
        return line, position
    size = int(line[1:])
    if line[:1] == b"$":
        return _bulk(data, position, size)
    if size < 0:
        return None, position
    items: list[bytes | None] = []
    for _ in range(size):
        item, position = _line(data, position)
        if item is None:
            return None
        if item[:1] == b"$" and item[1:].lstrip(b"-").isdigit():
            parsed = _bulk(data, position, int(item[1:]))
            if parsed is None:
                return None
            bulk, position = parsed
            items.append(bulk)
        else:
            items.append(item)
    return items, position


def _line(data: bytes, position: int) -> tuple[bytes | None, int]:
    end = data.find(b"\r\n", position)
    return (None, position) if end < 0 else (data[position:end], end + 2)


def _bulk(data: bytes, position: int, size: int) -> tuple[bytes | None, int] | None:
    if size < 0:
        return None, position
    if len(data) < position + size + 2:
        return None
    return data[position : position + size], position + size + 2


def sentinel_verdict(replies: list[Reply], master_name: str) -> tuple[str | None, Endpoint | None]:
    """(None, the master a sentinel named) from its replies to ``[AUTH,] SENTINEL
    get-master-addr-by-name``, or (why not, None), naming errors by their code only."""
    last = replies[-1] if replies else b""
    if isinstance(last, list):
        host, port = last if len(last) == 2 else (None, None)
        if host and port and port.isdigit() and 0 < int(port) < 65536:
            name = host.decode("ascii", "replace")
            if _usable_host(name):
                return None, Endpoint("redis", name, int(port))
        return "named a master address this check cannot use", None
    if replies and last is None:
        return f"knows no master named {_shown(master_name)}", None
    codes = [_error_code(r) for r in replies if isinstance(r, bytes) and r.startswith(b"-")]
    if codes:
        return f"answered {' then '.join(codes)}, not a master address", None
    return (
        "answered, but not with a master address" if replies else "closed without answering"
    ), None


def _shown(name: str) -> str:
    """A master name as the line may show it: the transport options' own, quoted, when it is
    short and plain; it is no credential."""
    plain = 0 < len(name) <= 64 and all(c.isalnum() or c in "-_.:" for c in name)
    return f"'{name}' (master_name in ${TRANSPORT_OPTIONS_ENV})" if plain else "by master_name"


def _read_replies(sock: socket.socket, count: int) -> list[Reply]:
    """The first ``count`` replies, or as many complete ones as came before the server closed
    the connection (or 4 KiB did: no answer this check wants is longer)."""
    data = b""
    while len(replies := parse_replies(data, count)) < count and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return replies


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


def _why(error: BaseException, timeout: float, ca_from_env: bool = False) -> str:
    """The cause of ``error`` in this module's words: an exception's text may hold the URL.
    ``ca_from_env``: the TLS connection trusted ``$CELERY_BROKER_CA_FILE``'s CA."""
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
        where = f"${CA_FILE_ENV}" if ca_from_env else "ssl_ca_certs"
        return f"TLS certificate not accepted (see {where}, ssl_check_hostname)"
    if ssl is not None and isinstance(error, ssl.SSLError):
        reason = error.reason
        known = isinstance(reason, str) and reason.replace("_", "").isalnum()
        return f"TLS failed ({reason})" if known else "TLS failed"
    if isinstance(error, MissingCaFileError):
        return f"the CA file that ${CA_FILE_ENV} names is missing"
    if isinstance(error, FileNotFoundError):
        return "a file named in the URL is missing"
    if isinstance(error, ValueError):
        return "unusable TLS options in the URL"
    code = getattr(error, "errno", None)
    return os.strerror(code).lower() if isinstance(code, int) else "connection failed"
