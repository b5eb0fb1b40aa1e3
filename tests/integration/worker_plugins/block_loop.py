"""A remote-control command that blocks the worker's main loop: a hung consumer, on demand.

Control commands run in the main process, in the consumer's event loop (the loop that answers
``ping``), so sleeping here freezes that loop the way a blocking call in it would.
"""

from __future__ import annotations

import time
from typing import Any

from celery.worker.control import control_command


@control_command(args=[("seconds", float)], signature="<seconds>")  # type: ignore[untyped-decorator]
def block_loop(state: Any, seconds: float = 30.0) -> dict[str, str]:
    time.sleep(seconds)
    return {"ok": f"blocked for {seconds}s"}
