"""OBSPA wall time and memory on a ResNet-50-size model at 224x224 (goal: < 30 s on 2 cores).

    python benchmarks/obspa_speed.py                    # full ResNet-50 (exported once into ~/.cache)
    python benchmarks/obspa_speed.py --model resnet50 --ratio 0.3 --stats natural synthetic

Prints the shrink phases, OBSPA's own split (statistics: model runs and H accumulation; greedy:
inverses, saliencies, downdates), how much memory the H blocks take and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphprune  # noqa: E402
from benchmarks._full_models import full_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--stats", nargs="*", default=["natural"])
    ap.add_argument("--samples", type=int, default=None)
    args = ap.parse_args()
    path = full_model(args.model)
    print(f"# benchmarks/obspa_speed.py, {datetime.date.today()}, {args.model} ({path.stat().st_size / 2**20:.0f} MB), "
          f"ratio {args.ratio}, {os.cpu_count()} CPUs visible")
    print("| stats | total s | load | analyze | score (stats + greedy) | rewrite | verify | samples | H MB | "
          "peak RSS MB | MACs kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for stats in args.stats:
        t = time.perf_counter()
        r = graphprune.shrink(str(path), ratio=args.ratio, method="obspa", stats=stats, samples=args.samples,
                              write=False)
        total = time.perf_counter() - t
        ph, ob = r.phases, r.obspa
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {stats} | {total:.1f} | {ph.get('load', 0):.1f} | {ph.get('analyze', 0):.1f} | "
              f"{ph.get('score', 0):.1f} ({ob.seconds.get('stats', 0):.1f} + {ob.seconds.get('greedy', 0):.1f}) | "
              f"{ph.get('rewrite', 0):.1f} | {ph.get('verify', 0):.1f} | {ob.samples} | "
              f"{ob.stats_bytes / 2**20:.0f} | {peak:.0f} | {100 * r.macs_after / r.macs_before:.1f}% |", flush=True)
        print(f"  {ob.summary()}")


if __name__ == "__main__":
    main()
