"""How kombu's Redis transport names the lists behind a Celery queue (pure, no I/O).

kombu stores a queue ``q`` as one Redis list per priority step: step 0 is the list ``q`` itself,
every other step ``s`` is ``q + sep + str(s)``. ``global_keyprefix`` is prepended to every key.
Reading only ``LLEN q`` undercounts as soon as a task is sent with a priority, so everything that
measures a backlog goes through :func:`queue_keys`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
"""kombu's ``PRIORITY_STEPS`` for the Redis transport."""

DEFAULT_SEPARATOR = "\x06\x16"
"""kombu's ``sep`` transport option: between a queue name and its priority step."""


@dataclass(frozen=True)
class KeyScheme:
    """The broker transport options that decide which Redis keys hold a queue's messages."""

    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    separator: str = DEFAULT_SEPARATOR


def queue_keys(queue: str, scheme: KeyScheme = KeyScheme()) -> list[str]:
    """Every Redis list that holds messages of ``queue``, one per distinct priority step.

    kombu maps a message priority to a step with ``bisect`` over ``priority_steps`` as given, so
    any list it writes is the list of some step, whatever their order. Its own ``_size`` sums one
    ``LLEN`` per entry and counts a duplicated step twice; here each list is named once.
    """
    keys: list[str] = []
    for step in sorted(set(scheme.priority_steps)):
        name = queue if step == 0 else f"{queue}{scheme.separator}{step}"
        keys.append(f"{scheme.global_keyprefix}{name}")
    return keys


def keys_for_queues(queues: Sequence[str], scheme: KeyScheme = KeyScheme()) -> dict[str, list[str]]:
    """Map each queue to its Redis lists, keeping the caller's order."""
    return {queue: queue_keys(queue, scheme) for queue in queues}


def delivery_tag(raw: bytes | str | None) -> str | None:
    """The ``delivery_tag`` kombu's Redis transport stores in a message (its JSON envelope's
    ``properties``); None for a missing or unreadable message."""
    if raw is None:
        return None
    try:
        envelope = json.loads(raw)
        tag = envelope["properties"]["delivery_tag"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(tag) if tag is not None else None


@dataclass
class OldestMessages:
    """How long each queue's oldest message has waited, at least.

    kombu pushes on the left of a list and consumes from the right, so the right end of each
    priority list holds its oldest message. Messages carry no time they were sent, so the age is
    measured from when the operator first saw a message there: a lower bound, as fine as the
    polls. One entry per list, whatever the traffic.
    """

    _first_seen: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)

    def observe(self, heads: Mapping[str, Sequence[str | None]], now: float) -> dict[str, float]:
        """``heads``: the delivery tag at the right end of each of a queue's lists (None when
        empty). Returns each queue's oldest age in seconds (0 when it is empty)."""
        ages: dict[str, float] = {}
        seen: set[tuple[str, int]] = set()
        for queue, tags in heads.items():
            age = 0.0
            for index, tag in enumerate(tags):
                if tag is None:
                    continue
                key = (queue, index)
                seen.add(key)
                known = self._first_seen.get(key)
                if known is None or known[0] != tag:
                    known = self._first_seen[key] = (tag, now)
                age = max(age, now - known[1])
            ages[queue] = age
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in seen}
        return ages


@dataclass(frozen=True)
class QueueLoad:
    """One queue's load at the moment it was read, on any broker."""

    waiting: int
    """Messages ready to be delivered: the backlog (Redis: the lists' lengths; RabbitMQ:
    ``messages_ready``)."""
    in_flight: int | None
    """Messages delivered and not yet acknowledged (RabbitMQ's ``messages_unacknowledged``):
    prefetched tasks, and running ones only with late acks (``task_acks_late``; by Celery's
    default a task is acknowledged as it starts). None when the read cannot see them (Redis,
    whose unacked hash is not per queue, and RabbitMQ over AMQP)."""
    consumers: int | None
    """Consumers of the queue; None when the read does not say."""
    source: str
    """How it was read (``redis``, ``management``, ``amqp``)."""
