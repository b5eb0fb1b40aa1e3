"""Queue-key naming checked against literal keys and against kombu's own naming code.

kombu's ``Channel._q_for_pri`` (priority -> list) and ``PrefixedStrictRedis._prefix_args``
(``global_keyprefix``) run here on a Channel built without a connection, so a kombu upgrade that
renames lists fails these tests rather than silently zeroing the operator's backlog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from kombu.transport.redis import Channel, PrefixedStrictRedis

from celery_operator.queues import (
    DEFAULT_PRIORITY_STEPS,
    DEFAULT_SEPARATOR,
    KeyScheme,
    OldestMessages,
    delivery_tag,
    keys_for_queues,
    queue_keys,
)

SEP = DEFAULT_SEPARATOR


@dataclass(frozen=True)
class Case:
    id: str
    scheme: KeyScheme
    queue: str
    expected: list[str]


CASES = [
    Case(
        "default scheme",
        KeyScheme(),
        "celery",
        ["celery", f"celery{SEP}3", f"celery{SEP}6", f"celery{SEP}9"],
    ),
    Case(
        "global key prefix on every list",
        KeyScheme(global_keyprefix="app1:"),
        "celery",
        ["app1:celery", f"app1:celery{SEP}3", f"app1:celery{SEP}6", f"app1:celery{SEP}9"],
    ),
    Case(
        "custom steps",
        KeyScheme(priority_steps=(0, 5)),
        "q",
        ["q", f"q{SEP}5"],
    ),
    Case(
        "unsorted steps with duplicates: each list once, in step order",
        KeyScheme(priority_steps=(9, 3, 0, 3, 9)),
        "q",
        ["q", f"q{SEP}3", f"q{SEP}9"],
    ),
    Case(
        "no step 0: the bare queue name is never a list",
        KeyScheme(priority_steps=(2, 7)),
        "q",
        [f"q{SEP}2", f"q{SEP}7"],
    ),
    Case(
        "single step 0: one list, like a transport without priorities",
        KeyScheme(priority_steps=(0,)),
        "q",
        ["q"],
    ),
    Case(
        "custom separator and prefix together",
        KeyScheme(global_keyprefix="p/", priority_steps=(0, 3, 6, 9), separator=":"),
        "hi",
        ["p/hi", "p/hi:3", "p/hi:6", "p/hi:9"],
    ),
]


def _kombu_channel(scheme: KeyScheme) -> Channel:
    """A real kombu Redis Channel, never connected, carrying the scheme's transport options."""
    channel = object.__new__(Channel)  # skips __init__, which would connect
    channel.sep = scheme.separator
    channel.priority_steps = list(scheme.priority_steps)
    return channel


def _kombu_key(scheme: KeyScheme, queue: str, priority: int) -> str:
    """The key kombu's redis transport uses for a message of ``priority`` in ``queue``."""
    channel = _kombu_channel(scheme)
    # kombu's own functions carry no annotations; the clients are lazy, so nothing connects.
    prefixer = PrefixedStrictRedis(global_keyprefix=scheme.global_keyprefix)  # type: ignore[no-untyped-call]
    key = channel._q_for_pri(queue, priority)  # type: ignore[no-untyped-call]
    command: list[str] = prefixer._prefix_args(["LLEN", key])  # type: ignore[no-untyped-call]
    return command[1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_queue_keys_are_the_literal_expected_keys(case: Case) -> None:
    assert queue_keys(case.queue, case.scheme) == case.expected


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_queue_keys_are_the_lists_kombu_counts(case: Case) -> None:
    # kombu's _size() reads _q_for_pri(queue, step) for each configured step.
    kombu_lists = {_kombu_key(case.scheme, case.queue, step) for step in case.scheme.priority_steps}
    assert set(queue_keys(case.queue, case.scheme)) == kombu_lists


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_priority_kombu_can_publish_lands_in_a_counted_list(case: Case) -> None:
    # The virtual transport clamps message priorities to 0..9 before choosing a list.
    written = {_kombu_key(case.scheme, case.queue, priority) for priority in range(10)}
    assert written <= set(queue_keys(case.queue, case.scheme))


def test_kombu_defaults_are_ours() -> None:
    channel = object.__new__(Channel)
    assert (tuple(channel.priority_steps), channel.sep) == (DEFAULT_PRIORITY_STEPS, SEP)
    assert channel.global_keyprefix == KeyScheme().global_keyprefix


def test_kombu_size_would_count_a_duplicated_step_twice() -> None:
    # Why queue_keys deduplicates: kombu's _size issues one LLEN per entry of priority_steps.
    scheme = KeyScheme(priority_steps=(0, 3, 3))
    per_entry = [_kombu_key(scheme, "q", step) for step in scheme.priority_steps]
    assert per_entry == ["q", f"q{SEP}3", f"q{SEP}3"]
    assert queue_keys("q", scheme) == ["q", f"q{SEP}3"]


def test_keys_for_queues_keeps_the_callers_order() -> None:
    scheme = KeyScheme(priority_steps=(0, 9))
    mapping = keys_for_queues(["zeta", "alpha"], scheme)
    assert list(mapping) == ["zeta", "alpha"]
    assert mapping["alpha"] == ["alpha", f"alpha{SEP}9"]


def test_delivery_tag_from_kombus_envelope_or_none() -> None:
    envelope = json.dumps({"body": "e30=", "properties": {"delivery_tag": "abc-1"}})
    assert delivery_tag(envelope.encode()) == "abc-1"
    assert delivery_tag(None) is None
    assert delivery_tag(b"not json") is None
    assert delivery_tag(b'{"properties": {}}') is None


def test_oldest_age_counts_from_first_sight_per_list_and_forgets_emptied_lists() -> None:
    oldest = OldestMessages()
    assert oldest.observe({"q": ("a", None)}, now=100.0) == {"q": 0.0}
    # Still "a" at the head 30 s later; a priority list gets its first message.
    assert oldest.observe({"q": ("a", "p1")}, now=130.0) == {"q": 30.0}
    # "a" consumed: the new head is only as old as its first sighting; "p1" keeps aging.
    assert oldest.observe({"q": ("b", "p1")}, now=140.0) == {"q": 10.0}
    assert oldest.observe({"q": (None, None), "r": ("c",)}, now=150.0) == {"q": 0.0, "r": 0.0}
    assert oldest.observe({"q": (None, "p1")}, now=160.0) == {"q": 0.0}  # forgotten, seen anew
