"""How kombu's Redis transport names the lists behind a Celery queue (pure, no I/O).

kombu stores a queue ``q`` as one Redis list per priority step: step 0 is the list ``q`` itself,
every other step ``s`` is ``q + sep + str(s)``. ``global_keyprefix`` is prepended to every key.
Reading only ``LLEN q`` undercounts as soon as a task is sent with a priority, so everything that
measures a backlog goes through :func:`queue_keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
