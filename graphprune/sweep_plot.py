"""``sweep.png``: latency and accuracy (or speed-up) against MACs, dense point and Pareto front marked.

matplotlib is optional (``pip install 'graphprune[plot]'``); without it :func:`draw` says so and the
sweep still writes its CSV and JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MISSING = ("matplotlib is not installed, so no sweep.png was drawn (sweep.csv and sweep.json are written); "
           "install it with: pip install 'graphprune[plot]'")


def draw(rows: Sequence[dict[str, Any]], dest: Path, *, title: str, quality: str) -> str | None:
    """Write the figure to ``dest``; returns a message instead when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    done = [r for r in rows if r.get("latency_ms") is not None and r.get("macs") is not None]
    if not done:
        return "no timed points to plot"
    right = "accuracy" if quality == "accuracy" else "speedup"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    devices = sorted({str(r["device"]) for r in done})
    for ax, key, label in ((axes[0], "latency_ms", "latency (ms, median)"),
                           (axes[1], right, "accuracy" if right == "accuracy" else "speed-up vs dense (x)")):
        for k, dev in enumerate(devices):
            pts = sorted((r for r in done if r["device"] == dev), key=lambda r: r["macs"])
            xs = [r["macs"] / 1e6 for r in pts]
            ys = [1.0 if r["point"] == "dense" and key == "speedup" else r.get(key) for r in pts]
            color = f"C{k}"
            ax.plot(xs, ys, "-o", color=color, ms=4, lw=1, alpha=0.7, label=dev if len(devices) > 1 else None)
            front = [(x, y) for x, y, r in zip(xs, ys, pts, strict=True) if r.get("pareto") and y is not None]
            if front:
                ax.scatter(*zip(*front, strict=True), s=90, facecolors="none", edgecolors="black", linewidths=1.4,
                           label="Pareto front" if k == 0 else None, zorder=3)
            for x, y, r in zip(xs, ys, pts, strict=True):
                if r["point"] == "dense" and y is not None:
                    ax.scatter([x], [y], marker="*", s=200, color=color, edgecolors="black", zorder=4,
                               label="dense" if k == 0 else None)
                elif y is not None:
                    ax.annotate(f"{r['ratio']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("MACs (M)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + (f" - Pareto by {quality}" if quality else ""))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(dest)
    return None
