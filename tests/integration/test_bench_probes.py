"""The probe-cost benchmark on a small cluster: only its deterministic findings are asserted.

Timings vary with the machine; what the probes send to the broker does not. Our checks read a file
and send nothing; ``celery inspect ping -d <one node>`` broadcasts, and every worker receives it.
"""

from __future__ import annotations

from tests.bench.bench_probes import OURS, PING, run_benchmark


def test_our_checks_send_nothing_and_ping_reaches_every_worker() -> None:
    costs = run_benchmark(workers=2, runs=3)
    assert set(costs) == {*OURS, PING}

    for cost in costs.values():
        assert cost.runs == 3
        assert len(cost.cpu_seconds) == len(cost.wall_seconds) == 3
        assert all(cpu > 0 for cpu in cost.cpu_seconds), cost
        assert all(wall > 0 for wall in cost.wall_seconds), cost
        assert cost.window_seconds > 0
        # Both workers listen on the pidbox channel, whoever probes.
        assert cost.pidbox_subscribers == 2, cost

    for name in OURS:
        ours = costs[name]
        assert ours.own_commands_total == 0, ours
        assert ours.pidbox_publishes_total == 0, ours
        assert ours.deliveries_total == 0, ours

    ping = costs[PING]
    assert ping.own_commands_total > 0
    assert ping.commands_total > 0
    assert ping.pidbox_publishes_total >= ping.runs
    assert ping.deliveries_total == ping.pidbox_publishes_total * ping.pidbox_subscribers
    assert ping.deliveries >= 2
