"""Send demo tasks to a CeleryCluster's broker and print their results as they arrive.

python examples/submit.py --broker redis://127.0.0.1:6390/0 add 20 22
python examples/submit.py --broker redis://127.0.0.1:6390/0 --count 20 sleep 2
"""

from __future__ import annotations

import argparse
import time

from celery import Celery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="the broker URL (also the result backend)")
    parser.add_argument("--count", type=int, default=1, help="how many tasks to send")
    parser.add_argument("--queue", default="celery")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("task", choices=("add", "sleep", "fail"))
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()

    app = Celery("submit", broker=options.broker, backend=options.broker)
    args: list[object] = [float(a) if options.task == "sleep" else a for a in options.args]
    if options.task == "add":
        args = [int(a) for a in options.args]
    started = time.monotonic()
    results = [
        app.send_task(f"celery_demo.tasks.{options.task}", args=args, queue=options.queue)
        for _ in range(options.count)
    ]
    print(f"sent {len(results)} x {options.task}{tuple(args)} to queue {options.queue!r}")
    for result in results:
        value = result.get(timeout=options.timeout, propagate=False)
        print(f"{result.id}: {result.state} {value!r} after {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
