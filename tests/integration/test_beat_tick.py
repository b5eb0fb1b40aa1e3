"""Beat run through ``celery-probe run`` announces its ticks where the operator reads them, with
the broker's key prefix; a stopped beat's announcement ages."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from celery_operator import broker
from celery_operator.queues import KeyScheme
from celery_probes import state as probe_state
from tests.integration.procs import BeatFactory, RedisServer, wait_for


def test_beat_announces_its_ticks_and_the_operator_reads_them(
    celery_beat: BeatFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert broker.BEAT_TICK_KEY == probe_state.BEAT_TICK_KEY
    options = {"global_keyprefix": "team-a:"}
    env = {
        "CELERY_PROBE_DIR": str(tmp_path / "state"),
        "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(options),
    }
    beat = celery_beat("--max-interval", "1", env=env, probes=True)
    client = broker.connect(redis_server.url, timeout=2.0)
    scheme = KeyScheme(global_keyprefix="team-a:")

    first = wait_for(
        lambda: broker.read_beat_tick(client, scheme),
        timeout=15,
        message="beat never announced a tick",
    )
    assert abs(time.time() - first) < 10
    assert broker.read_beat_tick(client, KeyScheme()) is None  # written under the prefix only
    later = wait_for(
        lambda: (t := broker.read_beat_tick(client, scheme)) and t > first and t,
        timeout=probe_state.BEAT_TICK_ANNOUNCE_SECONDS + 10,
        message="beat announced only once",
    )
    assert later - first >= probe_state.BEAT_TICK_ANNOUNCE_SECONDS - 0.5  # throttled

    beat.proc.send_signal(signal.SIGSTOP)
    try:
        stopped = broker.read_beat_tick(client, scheme)
        time.sleep(probe_state.BEAT_TICK_ANNOUNCE_SECONDS + 2)
        assert broker.read_beat_tick(client, scheme) == stopped  # a stalled beat says nothing
    finally:
        beat.proc.send_signal(signal.SIGCONT)
