"""Scale: analyze + shrink (FFN 25%, l2) of a ~1.1B-parameter LLaMA-style decoder with external data,
and analysis of a 7B-shaped one whose weights are never read.  Each measurement runs in its own
process so peak RSS is its own.  Prints a markdown table.

    python benchmarks/scale.py [--workdir DIR] [--verify]
Goals: 1B analyze+shrink < 60 s with peak RSS < 1.3x the weights' size; 7B analysis < 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, {root!r})
import graphprune
from graphprune.analysis import analyze
t0 = time.perf_counter()
mode = {mode!r}
if mode == "analyze":
    a = analyze({model!r})
    out = {{"groups": len(a.groups), "prunable": len(a.prunable), "phases": {{"analyze": a.seconds}}}}
else:
    r = graphprune.shrink({model!r}, ratio=0.25, heads=0.0, output={output!r}, verify={verify!r})
    out = {{"phases": r.phases, "params_after": r.params_after, "params_before": r.params_before,
           "verify": r.verify.summary() if r.verify else "skipped"}}
out["wall"] = time.perf_counter() - t0
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
'''


def run_child(mode: str, model: Path, output: Path | None = None, verify: bool = False) -> dict:
    code = CHILD.format(root=str(ROOT), mode=mode, model=str(model), output=str(output), verify=verify)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "graphprune-bench" / "llama")
    ap.add_argument("--verify", action="store_true", help="also run the ONNX Runtime proof (about 1.1x the weights in RSS, 2x the time)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from models.llama import PRESETS, build

    args.workdir.mkdir(parents=True, exist_ok=True)
    big = args.workdir / "llama1b.onnx"
    if not big.exists():
        t = time.perf_counter()
        build(PRESETS["1b"], big)
        print(f"generated {big} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    huge = args.workdir / "llama7b_sparse.onnx"
    if not huge.exists():
        build(PRESETS["7b"], huge, sparse=True)
    weights = os.path.getsize(str(big) + ".data")
    print("| model | params | weights | step | wall s | peak RSS | RSS / weights | phases (s) |")
    print("|---|---|---|---|---|---|---|---|")
    a = run_child("analyze", big)
    print(f"| llama-1b | {PRESETS['1b'].params() / 1e9:.2f}B | {weights / 2**30:.2f} GiB | analyze | {a['wall']:.1f} | "
          f"{a['peak_rss'] / 2**30:.2f} GiB | {a['peak_rss'] / weights:.2f} | analyze {a['phases']['analyze']:.1f} |")
    out = args.workdir / "llama1b.pruned.onnx"
    s = run_child("shrink", big, out, verify=args.verify)
    ph = ", ".join(f"{k} {v:.1f}" for k, v in s["phases"].items())
    print(f"| llama-1b | | | shrink FFN 25% l2 ({s['verify']}) | {s['wall']:.1f} | {s['peak_rss'] / 2**30:.2f} GiB | "
          f"{s['peak_rss'] / weights:.2f} | {ph} |")
    h = run_child("analyze", huge)
    print(f"| llama-7b (weights not read) | {PRESETS['7b'].params() / 1e9:.2f}B | {os.path.getsize(str(huge) + '.data') / 2**30:.1f} GiB (sparse) | "
          f"analyze | {h['wall']:.1f} | {h['peak_rss'] / 2**30:.2f} GiB | | analyze {h['phases']['analyze']:.1f} |")
    for p in (out, Path(str(out) + ".data")):
        p.unlink(missing_ok=True)
    _ = resource


if __name__ == "__main__":
    main()
