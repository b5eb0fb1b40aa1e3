"""``celery-probe run`` caps kombu's wait between two attempts to reach a broker that went away,
unless the caller chose one: measured on a real kombu connection to a port nobody listens on, in
a process of its own (the cap patches kombu for the whole process, as in a worker)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.procs import HOST, free_port

ATTEMPTS = """
import json, sys
from kombu import Connection
from celery_probes import hooks

hooks.cap_reconnect_interval(0.3)
defaults, chosen = [], []
connection = Connection(sys.argv[1], connect_timeout=0.5)
for waits, args in ((defaults, ()), (chosen, (0.1, 0.1, 0.2))):
    try:
        connection.ensure_connection(lambda exc, wait: waits.append(wait), 3, *args)
    except Exception:
        pass
print(json.dumps({"defaults": defaults, "chosen": chosen}))
"""


def test_the_wait_between_attempts_is_capped_unless_the_caller_chose_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ATTEMPTS, f"redis://{HOST}:{free_port()}/0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    waits = json.loads(done.stdout)
    # kombu's defaults would wait 2, 4, 6 s (and up to 30 s later on).
    assert waits == {"defaults": [0.3, 0.3, 0.3], "chosen": [0.1, 0.2, 0.2]}
