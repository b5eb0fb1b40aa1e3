"""The demo tasks, registered under ``celery_demo.tasks.<function name>``.

They are plain typed functions registered with ``app.task`` at the bottom (Celery has no type
information, and its decorator would make them untyped). Producers call them by name with
``send_task``, as a separate client application would.

The Redis keys these tasks write (``record``'s and ``celery_demo:beat_ticks``) carry the broker's
``global_keyprefix``, like kombu's own keys, so apps that share one Redis through prefixes do not
count each other's runs.
"""

from __future__ import annotations

import functools
import os
import time

import redis

from . import config
from .celery import app

BEAT_TICKS_KEY = "celery_demo:beat_ticks"


class DemoTaskError(Exception):
    """What ``fail`` raises, so a caller can tell it from any other error."""


def add(x: int, y: int) -> int:
    return x + y


def sleep(seconds: float) -> float:
    """Block a pool slot for ``seconds``: stands for a long task in shutdown and scaling tests."""
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    raise DemoTaskError(message)


def record(key: str, token: str) -> int:
    """Count one run under ``key``: ``<key>:tokens`` (a set of tokens) and ``<key>:runs``.

    A test that sends N tasks with distinct tokens proves each ran exactly once when the set has
    N members (none lost) and the counter is N (none run twice). Returns the counter.
    """
    prefix = config.global_keyprefix(os.environ)
    pipe = _redis().pipeline(transaction=True)
    pipe.sadd(f"{prefix}{key}:tokens", token)
    pipe.incr(f"{prefix}{key}:runs")
    _, runs = pipe.execute()
    return int(runs)


def record_after(key: str, token: str, seconds: float) -> int:
    """``record`` after ``seconds`` of work: a task long enough for scaling to matter."""
    time.sleep(seconds)
    return record(key, token)


def beat_tick() -> int:
    """Scheduled by beat every ``CELERY_DEMO_BEAT_INTERVAL`` seconds; counts its own runs."""
    prefix = config.global_keyprefix(os.environ)
    return int(_redis().incr(f"{prefix}{BEAT_TICKS_KEY}"))


@functools.cache
def _redis() -> redis.Redis[bytes]:
    """One client per pool process, to the broker's Redis (the first URL of a failover list)."""
    url = str(app.conf.broker_url).split(";")[0].strip()
    return redis.Redis.from_url(url)


for _function in (add, sleep, fail, record, record_after, beat_tick):
    app.task(name=f"{__name__}.{_function.__name__}")(_function)
