"""Dense vs pruned latency on ONNX Runtime CPU, beside the MACs ratio.

For full-size ResNet-50 and MobileNetV2 at 224x224, batch 1 and 8: shrink (l2) at ratios 0.25/0.5 with
--round-to 1/8/16, then time dense and pruned interleaved (A, B, A, B, ...) in one `graphprune profile
--compare` run so machine noise hits both.  Prints a markdown table.

    python benchmarks/latency.py [--duration 2] [--threads 2]
Goal: latency ratio <= 1.15 x MACs ratio at ratio 0.5, and never slower than dense.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _full_models import full_model  # noqa: E402

import graphprune  # noqa: E402


def profile_pair(dense: Path, pruned: Path, batch: int, duration: float, threads: int, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "graphprune", "profile", str(dense), "--compare", str(pruned), "-t", "ort-cpu",
           "--shapes", f"input:{batch}x3x224x224", "--duration", str(duration), "--warmup", "0.5",
           "--threads", str(threads), "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    runs = json.loads(out.read_text())["runs"]
    return runs[0]["latency_ms"]["median"], runs[1]["latency_ms"]["median"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print("| model | ratio | round-to | MACs kept | batch | dense ms | pruned ms | latency ratio | latency / MACs ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet50", "mobilenetv2"):
            dense = full_model(name)
            for ratio in (0.25, 0.5):
                for round_to in (1, 8, 16):
                    pruned = Path(tmp) / f"{name}-{ratio}-{round_to}.onnx"
                    r = graphprune.shrink(str(dense), ratio=ratio, round_to=round_to, output=str(pruned))
                    macs = r.macs_after / r.macs_before
                    for batch in (1, 8):
                        d, p = profile_pair(dense, pruned, batch, args.duration, args.threads, Path(tmp) / "p.json")
                        lat = p / d
                        print(f"| {name} | {ratio} | {round_to} | {macs:.3f} | {batch} | {d:.2f} | {p:.2f} | "
                              f"{lat:.3f} | {lat / macs:.2f} |", flush=True)


if __name__ == "__main__":
    main()
