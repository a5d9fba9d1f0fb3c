"""What the profiler itself costs: timing-loop overhead per sample and the runner's start-up.

Run: ``.venv/bin/python benchmarks/profile_overhead.py``.  Prints a table; asserts nothing.  The loop
overhead bounds the smallest latency ``graphprune profile`` can resolve; the start-up is paid once per
``profile``/``build`` (a child process locally, an ssh session on a device).
"""

from __future__ import annotations

import statistics
import time

from rich.console import Console
from rich.table import Table

from graphprune.targets.executor import LocalExecutor
from graphprune.targets.runner import timed_loop


def main() -> None:
    rows = []
    for n in (1, 2):
        e2e, _, _ = timed_loop([lambda: None] * n, {"warmup_s": 0.05, "iterations": 20000, "duration_s": 0.0})
        rows.append((f"timed_loop, {n} no-op model(s)", statistics.median(e2e[0]) * 1e3, "us / sample"))
    ex = LocalExecutor()
    starts = []
    for _ in range(3):
        t0 = time.perf_counter()
        ex.run({"op": "facts"})
        starts.append(time.perf_counter() - t0)
    rows.append(("local runner start-up + facts", statistics.median(starts) * 1e3, "ms / call"))
    table = Table(title="graphprune profiler overhead")
    for col in ("what", "median", "unit"):
        table.add_column(col)
    for what, value, unit in rows:
        table.add_row(what, f"{value:.3f}", unit)
    Console().print(table)


if __name__ == "__main__":
    main()
