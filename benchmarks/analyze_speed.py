"""Analysis time on full-width models (ResNet-50 at 224, BERT-base).  Prints a markdown table.

    python benchmarks/analyze_speed.py            # goal: ResNet-50 < 0.5 s, BERT-base < 2 s on 2 cores
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _full_models import full_model  # noqa: E402

from graphprune.analysis import analyze  # noqa: E402
from graphprune.model_io import load_model  # noqa: E402


def main() -> None:
    print("| model | nodes | groups (prunable) | load s | analyze s (median of 5) |")
    print("|---|---|---|---|---|")
    for name in ("resnet50", "bert_base"):
        path = full_model(name)
        t = time.perf_counter()
        loaded = load_model(path)
        t_load = time.perf_counter() - t
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a = analyze(loaded)
            times.append(time.perf_counter() - t)
        print(f"| {name} | {len(a.view.nodes)} | {len(a.groups)} ({len(a.prunable)}) | {t_load:.2f} | "
              f"{statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
