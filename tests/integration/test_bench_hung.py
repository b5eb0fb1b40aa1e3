"""The hung-worker benchmark on two workers: only its deterministic findings are asserted.

Timings vary with the machine; what a cycle sends to the broker and whom the monitor restarts do
not. A cycle is three broadcasts (ping, stats, active), each delivered once to every worker, and
only the frozen worker is restarted.
"""

from __future__ import annotations

import math

from tests.bench.bench_hung import BROADCASTS, UNRESPONSIVE_CYCLES, run_benchmark


def test_a_cycle_is_three_broadcasts_and_only_the_frozen_worker_is_restarted() -> None:
    (cost,) = run_benchmark(sizes=[2], cycles=2)

    assert cost.workers == 2
    assert cost.cycles == 2
    assert cost.answering == (2, 2)
    assert cost.pidbox_subscribers == 2
    assert cost.pidbox_publishes_total == BROADCASTS * cost.cycles
    assert cost.pidbox_publishes == BROADCASTS
    assert cost.deliveries == BROADCASTS * cost.workers
    assert cost.deliveries_one_by_one == 4

    assert cost.restarted_pods == (cost.stopped_pod,)
    assert cost.detection_cycles == UNRESPONSIVE_CYCLES
    assert 0 < cost.detection_seconds < math.inf
