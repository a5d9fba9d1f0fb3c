"""Wall time per shrink phase (load, analyze, score, rewrite, verify, save) on full-width models.

    python benchmarks/shrink_speed.py             # goal: analyze+score+rewrite < 1 s for ResNet-50
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _full_models import full_model  # noqa: E402

import graphprune  # noqa: E402

PHASES = ("load", "analyze", "score", "rewrite", "verify", "save")


def main() -> None:
    print("| model | " + " | ".join(PHASES) + " | analyze+score+rewrite |")
    print("|---|" + "---|" * (len(PHASES) + 1))
    for name in ("resnet50", "bert_base"):
        path = full_model(name)
        with tempfile.TemporaryDirectory() as tmp:
            r = graphprune.shrink(str(path), ratio=0.5, output=str(Path(tmp) / "p.onnx"))
        ph = r.phases
        core = ph["analyze"] + ph["score"] + ph["rewrite"]
        print(f"| {name} | " + " | ".join(f"{ph.get(p, 0):.2f}" for p in PHASES) + f" | {core:.2f} |")


if __name__ == "__main__":
    main()
