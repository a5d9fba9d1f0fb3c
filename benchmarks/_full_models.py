"""Full-size models for benchmarks, exported once into a cache folder (needs torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "graphprune-bench"


def full_model(name: str) -> Path:
    path = CACHE / f"{name}.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(ROOT / "models" / "export_zoo.py"), "--full", name, "--out", str(CACHE)],
                       check=True)
    return path
