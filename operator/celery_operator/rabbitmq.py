"""The adapter that reads a RabbitMQ broker's queues: how many messages wait, how many are in
flight (delivered to a consumer, not yet acknowledged), and how many consumers each queue has.

Two ways, both one round of requests per poll whatever the number of queues:

* **The management HTTP API** (:func:`read_management`): one ``GET /api/queues/{vhost}`` for all
  queues of a virtual host, ``messages_ready`` as waiting and ``messages_unacknowledged`` as in
  flight. It asks with ``disable_stats=true&enable_queue_totals=true``: the counts then come
  from the queues themselves, as ``rabbitmqctl list_queues`` reads them (measured on 3.10: a
  classic queue's counts are current, a quorum queue's lag up to its ~3 s metrics tick), instead
  of from the statistics database, which lags by its ``collect_statistics_interval`` (5 s by
  default; measured 2.5-6.3 s) and lists a new queue without counts until its first sample.
  Current counts cost a little more (per poll of 50 queues, the node's CPU: 1.8 ms, against
  1.2 ms from the statistics and 6.8 ms for 50 passive declares), and this answer has no
  ``consumers`` field, so :attr:`QueueLoad.consumers` is None from it.
* **AMQP passive ``queue_declare``** (:func:`read_amqp`), for a broker without a management
  API: one connection, one declare per queue. It gives ready messages and consumers, and
  nothing about unacknowledged ones: :attr:`QueueLoad.in_flight` is None, so that status can
  say "unacked unknown" instead of counting them as zero.

A priority queue (``x-max-priority``) is one queue in RabbitMQ, counted once; a quorum queue
(``x-queue-type: quorum``, Celery 5.5's ``task_default_queue_type``) reports the same fields. A
queue that does not exist has nothing waiting, nothing in flight and no consumer.

Every failure is :class:`celery_operator.broker.BrokerUnavailable`, whose text names the broker
by scheme, host and port only: texts that come from an error pass through
:func:`celery_operator.brokerurl.redact` with the URL and the password, so neither a credential
nor a URL's user information reaches a status, an Event or a log line.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard
from urllib.parse import quote, urlsplit

from kombu.connection import Connection
from kombu.exceptions import OperationalError

from celery_operator import brokerurl
from celery_operator.broker import BrokerUnavailable
from celery_operator.queues import QueueLoad

__all__ = ["ManagementApi", "QueueLoad", "RabbitQueues", "read_amqp", "read_management"]

KIND: Final = "rabbitmq"
""":attr:`RabbitQueues.kind`, as status and ``kubectl get -o wide`` show it."""

MANAGEMENT: Final = "management"
""":attr:`QueueLoad.source` of a count read from the management HTTP API."""
AMQP: Final = "amqp"
""":attr:`QueueLoad.source` of a count read by AMQP passive ``queue_declare``."""

QUEUE_COLUMNS: Final = ("name", "messages_ready", "messages_unacknowledged", "consumers")
"""What the management API is asked for (``columns=``): a smaller answer to build and parse.
``consumers`` is listed for servers that give it; 3.10 leaves it out of a read without
statistics."""

MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024
"""The largest queue listing read (about 300,000 queues at ~100 bytes each): anything larger is
not the management API's answer, and must not be held in memory."""

MAX_REASON_CHARS: Final = 120
"""How much of the API's own reason for an error status a message quotes."""

NOT_FOUND: Final = 404
"""The AMQP reply code of a passive ``queue_declare`` for a queue that does not exist."""


@dataclass(frozen=True)
class ManagementApi:
    """Where a broker's management HTTP API is and how to log in; ``repr()`` shows no password.

    ``url`` is ``http(s)://host[:port][/path prefix]`` (the prefix being the server's
    ``management.path_prefix``), without user information, query or fragment: the credentials
    come separately, from a Secret.
    """

    url: str
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    """A CA bundle (PEM file) to verify an ``https`` API's certificate with, instead of the
    system's."""
    ca_data: str | None = field(default=None, repr=False, compare=False)
    """The same as PEM text (``spec.broker.caSecretRef``'s), used instead of ``ca_file``."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("the management API URL must start with http:// or https://")
        if "@" in parts.netloc or parts.query or parts.fragment:
            # Name nothing of the URL: what is wrong with it may be a password.
            raise ValueError(
                "the management API URL must be only scheme, host, port and path: "
                "credentials go in the Secret, not in the URL"
            )
        try:
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise ValueError("the management API URL's port must be a number") from None
        if not parts.hostname:
            raise ValueError("the management API URL names no host")

    @property
    def display(self) -> str:
        """``scheme://host:port``: how messages name the API."""
        parts = urlsplit(self.url)
        default = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{shown}:{parts.port or default}"


def queues_path(vhost: str, prefix: str = "") -> str:
    """The request path of the one listing per poll: every queue of ``vhost`` (percent-encoded
    whole, so ``/`` is ``%2F``), only :data:`QUEUE_COLUMNS`, counts from the queues themselves."""
    columns = ",".join(QUEUE_COLUMNS)
    return (
        f"{prefix.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
        f"?columns={columns}&disable_stats=true&enable_queue_totals=true"
    )


def parse_queue_listing(body: bytes, queues: Sequence[str]) -> dict[str, QueueLoad]:
    """The load of each of ``queues`` from a ``GET /api/queues/{vhost}`` answer (pure).

    A queue missing from the listing does not exist and counts 0 waiting, 0 in flight, 0
    consumers. A queue listed without its counts (its node is down, or a statistics read before
    its first sample) cannot be counted: BrokerUnavailable names it, since 0 would be a guess.
    ``consumers`` is taken when the answer has it, else None.
    """
    try:
        listing = json.loads(body)
    except ValueError:
        raise BrokerUnavailable("the management API's answer is not JSON") from None
    if not isinstance(listing, list):
        raise BrokerUnavailable("the management API's answer is not a list of queues")
    wanted = set(queues)
    found: dict[str, QueueLoad] = {}
    for entry in listing:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BrokerUnavailable("the management API's answer is not a list of queues")
        name = entry["name"]
        if name in wanted:
            found[name] = _load_of(name, entry)
    absent = QueueLoad(waiting=0, in_flight=0, consumers=0, source=MANAGEMENT)
    return {queue: found.get(queue, absent) for queue in queues}


def read_management(
    api: ManagementApi, vhost: str, queues: Sequence[str], *, timeout: float
) -> dict[str, QueueLoad]:
    """The load of each of ``queues`` in ``vhost``, in one HTTP request.

    ``timeout`` bounds the connect and each read of the answer. Raises BrokerUnavailable when
    the API cannot be reached, refuses the credentials, has no such vhost, or answers anything
    but a queue listing.
    """
    if not queues:
        return {}
    where = f"the management API {api.display}"
    parts = urlsplit(api.url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cafile=None if api.ca_data else api.ca_file, cadata=api.ca_data
        )
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    login = base64.b64encode(f"{api.username}:{api.password}".encode()).decode("ascii")
    try:
        connection.request(
            "GET",
            queues_path(vhost, parts.path),
            headers={"Authorization": f"Basic {login}", "Accept": "application/json"},
        )
        response = connection.getresponse()
        body = response.read(MAX_ANSWER_BYTES + 1)
    except (OSError, http.client.HTTPException) as error:
        text = brokerurl.redact(_describe(error), api.url, api.password)
        raise BrokerUnavailable(f"{where}: cannot list the queues: {text}") from None
    finally:
        connection.close()
    if response.status != http.client.OK:
        reason = brokerurl.redact(_error_reason(body), api.url, api.password)
        raise BrokerUnavailable(f"{where}: {_refusal(response.status, vhost)}{reason}")
    if len(body) > MAX_ANSWER_BYTES:
        raise BrokerUnavailable(f"{where}: the queue listing is larger than {MAX_ANSWER_BYTES} B")
    try:
        return parse_queue_listing(body, queues)
    except BrokerUnavailable as error:
        raise BrokerUnavailable(f"{where} (vhost {vhost!r}): {error}") from None


def read_amqp(
    url: str,
    queues: Sequence[str],
    *,
    timeout: float,
    ca_file: str | None = None,
    ca_data: str | None = None,
) -> dict[str, QueueLoad]:
    """The ready messages and consumers of each of ``queues``, by AMQP passive
    ``queue_declare`` over one connection to the broker URL ``url`` (``amqp://``, ``amqps://``;
    its virtual host is the URL's). ``in_flight`` is None: AMQP does not tell.

    ``timeout`` bounds the connect (with its handshake) and each reply. A queue that does not
    exist counts 0; the server closes the channel of that declare, and the next one gets a new
    channel. Of a ``;``-separated failover list, the first host that answers is read. Raises
    BrokerUnavailable when the broker cannot be reached or refuses us, and
    :class:`celery_operator.brokerurl.BrokerUrlError` (a ValueError) for a URL that cannot be
    used. ``ca_file`` (or the PEM text ``ca_data``) verifies an ``amqps`` broker's certificate
    instead of the system's CA bundle.
    """
    address = brokerurl.parse(url)
    brokerurl.check_supported(address, brokerurl.AMQP_SCHEMES)
    if not queues:
        return {}
    connection: Any = Connection(  # type: ignore[no-untyped-call]
        address.url,
        connect_timeout=timeout,
        heartbeat=0,
        ssl=amqp_tls(address, ca_file, ca_data),
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )
    errors = (OSError, OperationalError, *connection.connection_errors)
    channel_errors: tuple[type[BaseException], ...] = connection.channel_errors
    loads: dict[str, QueueLoad] = {}
    try:
        # One attempt per host of a failover list, without kombu's sleeps between them.
        connection.ensure_connection(max_retries=len(address.hosts) - 1, timeout=timeout)
        channel: Any = connection.channel()
        for queue in queues:
            try:
                _, ready, consumers = channel.queue_declare(queue=queue, passive=True)
            except channel_errors as error:
                if getattr(error, "reply_code", None) != NOT_FOUND:
                    raise
                ready = consumers = 0
                channel = connection.channel()
            loads[queue] = QueueLoad(
                waiting=int(ready), in_flight=None, consumers=int(consumers), source=AMQP
            )
    except (*errors, *channel_errors) as error:
        text = brokerurl.redact(_describe(error), url)
        raise BrokerUnavailable(f"{address.display}: cannot read the queues: {text}") from None
    finally:
        connection.release()
    return loads


# --- helpers ---------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    """An error's text, or its type's name when it has none (``BadStatusLine('')``)."""
    text = str(error)
    return text if text.strip("'\" ") else type(error).__name__


def _load_of(name: str, entry: Mapping[str, Any]) -> QueueLoad:
    ready = entry.get("messages_ready")
    unacked = entry.get("messages_unacknowledged")
    if not (_is_count(ready) and _is_count(unacked)):
        state = entry.get("state")
        why = f" (state {state!r})" if isinstance(state, str) else ""
        raise BrokerUnavailable(f"queue {name!r} is listed without its message counts{why}")
    consumers = entry.get("consumers")
    return QueueLoad(
        waiting=ready,
        in_flight=unacked,
        consumers=consumers if _is_count(consumers) else None,
        source=MANAGEMENT,
    )


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refusal(status: int, vhost: str) -> str:
    """What a non-200 answer means."""
    if status == http.client.UNAUTHORIZED:
        return (
            f"refused the login for vhost {vhost!r} (401: wrong credentials, a user without "
            "the monitoring or management tag, or without access to the vhost)"
        )
    if status == http.client.NOT_FOUND:
        return f"has no vhost {vhost!r} (404), or the URL is not the management API"
    try:
        reason = http.client.responses[status]
    except KeyError:
        reason = "unexpected status"
    return f"answered {status} {reason}"


def _error_reason(body: bytes) -> str:
    """``: <reason>`` from the API's JSON error (``{"error": .., "reason": "Login failed"}``),
    which tells the 401s apart; nothing for any other body (a proxy's HTML page, ...)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    reason = answer.get("reason") if isinstance(answer, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        return ""
    return f": {' '.join(reason.split())[:MAX_REASON_CHARS]}"


def amqp_tls(
    address: brokerurl.BrokerAddress, ca_file: str | None, ca_data: str | None = None
) -> Any:
    """py-amqp's ``ssl`` argument: for ``amqps`` a context that verifies the certificate and the
    host name (``ssl.create_default_context``), for ``amqp`` none."""
    if not address.tls:
        return False
    context: dict[str, Any]
    if ca_data:
        context = {"cadata": ca_data}
    elif ca_file:
        context = {"cafile": ca_file}
    else:
        context = {"purpose": ssl.Purpose.SERVER_AUTH}
    # None: kombu puts in the host it connects to (each of a failover list in turn).
    return {"context": context, "server_hostname": None}


class RabbitQueues:
    """A RabbitMQ broker's queues, as :class:`celery_operator.brokers.Broker` reads them: from
    the management API when one is configured, else by AMQP passive declares (ready only)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        management: ManagementApi | None = None,
        ca_data: str | None = None,
    ) -> None:
        address = brokerurl.parse(url)
        brokerurl.check_supported(address, brokerurl.AMQP_SCHEMES)
        self.url = address.url
        self.vhost = address.virtual_host or brokerurl.DEFAULT_VIRTUAL_HOST
        self.timeout = timeout
        self.ca_data = ca_data
        self.management = management
        self.kind = KIND
        self.counting = (
            f"ready and unacknowledged messages read from the management API {management.display}"
            if management is not None
            else "ready messages read by AMQP passive declare; messages in flight (unacked) are "
            "unknown without spec.broker.managementApi"
        )

    def loads(self, queues: Sequence[str]) -> dict[str, QueueLoad]:
        if self.management is not None:
            return read_management(self.management, self.vhost, queues, timeout=self.timeout)
        return read_amqp(self.url, queues, timeout=self.timeout, ca_data=self.ca_data)

    def heads(self, queues: Sequence[str]) -> dict[str, tuple[str | None, ...]]:
        """Nothing: reading a RabbitMQ queue's oldest message would take it (and redeliver it)."""
        return {}

    def beat_tick(self) -> float | None:
        """None: beat announces its ticks on Redis brokers only."""
        return None

    def close(self) -> None:
        """Nothing is held between reads: each poll makes its one request or connection."""
