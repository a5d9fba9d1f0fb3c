"""The channel staircase of ONNX Runtime CPU here, and what ``--round-to auto`` makes of it.

Part 1 times single-op models (the ones ``graphprune calibrate-latency`` builds) at every channel count
in a window: Conv 3x3 and 1x1 (output and input channels) and Gemm (output features), each series in
one interleaved run.  ``*`` marks multiples of 8.

Part 2 prunes full-size ResNet-50 (224x224, batch 1) at ratio 0.5 with ``--round-to 1``, ``8`` and
``auto`` (the latency table's step edges), then times dense and the three pruned models interleaved
in one run.  Figures are the fastest run (what the table predicts) and the median.

    python benchmarks/staircase.py [--threads 1] [--duration 0.1] [--points 4] [--cache DIR]
                                     [--skip-staircase] [--skip-resnet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _full_models import full_model  # noqa: E402

import graphprune  # noqa: E402
from graphprune.allocation import AllocationOptions  # noqa: E402
from graphprune.analysis import analyze  # noqa: E402
from graphprune.calibrate import calibrate, fast_ms, time_files  # noqa: E402
from graphprune.farm import devices_from  # noqa: E402
from graphprune.latency_target import prune_with  # noqa: E402
from graphprune.layer_shapes import LayerSig, baseline_model, layer_model  # noqa: E402
from graphprune.model_io import load_model  # noqa: E402
from graphprune.targets import OrtOptions, ProfileOptions, TargetOptions, get_target  # noqa: E402

WINDOW = 33


def conv(k: int, cin: int, cout: int, hw: int) -> LayerSig:
    return LayerSig("conv", cin, cout, (1, hw, hw), (k, k), (1, 1), (k // 2,) * 4, (1, 1))


SERIES = [  # label, signature, axis, first count of the window
    ("3x3 64->c @56", conv(3, 64, 64, 56), "out", 32),
    ("3x3 c->64 @56", conv(3, 64, 64, 56), "in", 32),
    ("1x1 256->c @14", conv(1, 256, 256, 14), "out", 224),
    ("1x1 c->256 @14", conv(1, 256, 256, 14), "in", 224),
    ("gemm 2048->c b8", LayerSig("gemm", 2048, 1024, (8,), trans_b=1), "out", 992),
]


def staircase(options: TargetOptions, timing: ProfileOptions) -> None:
    target, dev = get_target("ort-cpu"), devices_from([None])[0]
    columns = []
    for label, sig, axis, start in SERIES:
        counts = list(range(start, start + WINDOW))
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / "base.onnx"]
            import onnx

            onnx.save(baseline_model(), paths[0])
            for c in counts:
                ci, co = (c, sig.cout) if axis == "in" else (sig.cin, c)
                paths.append(Path(tmp) / f"{c}.onnx")
                onnx.save(layer_model(sig, ci, co), paths[-1])
            runs = time_files(target, options, dev, paths, timing).runs
        base = fast_ms(runs[0])
        columns.append((label, start, [fast_ms(r) - base for r in runs[1:]]))
        print(f"  timed {label} ({len(counts)} models)", file=sys.stderr, flush=True)
    print("| k | " + " | ".join(f"{label} (c = {start}+k)" for label, start, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for k in range(WINDOW):
        cells = []
        for _, start, ms in columns:
            c = start + k
            cells.append(f"{c}{'*' if c % 8 == 0 else ' '} {ms[k]:.3f}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print("| series | ms per channel, multiples of 8 | other counts | largest step (multiple of 8 -> +1) "
          "| off-grid count vs the multiple of 8 above it (worst) |")
    print("|---|---|---|---|---|")
    for label, start, ms in columns:
        at = dict(zip(range(start, start + WINDOW), ms, strict=True))
        al = [t / c for c, t in at.items() if c % 8 == 0]
        off = [t / c for c, t in at.items() if c % 8]
        step = max((at[c + 1] / at[c], c) for c in at if c % 8 == 0 and c + 1 in at)
        worse = max((t / at[-(-c // 8) * 8], c) for c, t in at.items() if c % 8 and -(-c // 8) * 8 in at)
        print(f"| {label} | {1e3 * sum(al) / len(al):.2f} us | {1e3 * sum(off) / len(off):.2f} us | "
              f"{step[0]:.2f}x ({step[1]} -> {step[1] + 1}) | {worse[0]:.2f}x ({worse[1]} vs {-(-worse[1] // 8) * 8}) |")


def resnet50(options: TargetOptions, timing: ProfileOptions, points: int, cache: Path, duration: float) -> None:
    from graphprune.allocation import CostModel

    dense = full_model("resnet50")
    t0 = time.perf_counter()
    loaded = load_model(str(dense))
    analysis = analyze(loaded)
    [cal] = calibrate(dense, options=options, analysis=analysis, cache_dir=cache, points=points, timing=timing)
    print(f"\nlatency table: {len({lay.sig.id for lay in cal.layers})} layer shapes, {cal.measured} points measured "
          f"now, {cal.cached} cached, {time.perf_counter() - t0:.0f} s")
    lat = cal.latency(analysis)
    cost = CostModel(analysis)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for ranking in ("local", "global"):
            for rt in (1, 8, "auto"):
                out = Path(tmp) / f"r50-{ranking}-{rt}.onnx"
                if rt == "auto":
                    opts = AllocationOptions(ratio=0.5, round_to="auto", latency=lat, global_ranking=ranking == "global")
                    alloc = prune_with(dense, loaded, analysis, opts, output=out).allocation
                else:
                    alloc = graphprune.shrink(str(dense), ratio=0.5, round_to=int(rt), output=str(out),
                                              global_ranking=ranking == "global").allocation
                counts = {g: d.removed for g, d in alloc.decisions.items()}
                odd = sum(1 for d in alloc.decisions.values() if d.removed and d.units_after % 8)
                macs = cost.evaluate(counts)[0] / cost.dense_macs
                rows.append((ranking, rt, out, macs, odd, lat.predict(cost.removed_channels(counts))))
                print(f"  pruned {ranking} round-to {rt}", file=sys.stderr, flush=True)
        report = time_files(get_target("ort-cpu"), options, devices_from([None])[0], [dense] + [r[2] for r in rows],
                            ProfileOptions(warmup_s=1.0, iterations=10, duration_s=duration))
    d_fast, d_med = fast_ms(report.runs[0]), report.runs[0].latency.median
    print(f"\nResNet-50 @224, batch 1, ratio 0.5, l2, dense and the six pruned models timed interleaved: dense "
          f"{d_fast:.2f} ms fastest / {d_med:.2f} ms median (when the table was made: {cal.dense_ms:.2f} ms)\n")
    print("| ranking | round-to | MACs kept | groups off a multiple of 8 | predicted ms | fastest ms | median ms "
          "| speed-up (fastest / median) | prediction error (rescaled to this run's dense) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (ranking, rt, _, macs, odd, pred), run in zip(rows, report.runs[1:], strict=True):
        f, m = fast_ms(run), run.latency.median
        now = pred * d_fast / cal.dense_ms
        print(f"| {ranking} | {rt} | {macs:.3f} | {odd} | {pred:.2f} | {f:.2f} | {m:.2f} | {d_fast / f:.2f}x / "
              f"{d_med / m:.2f}x | {100 * (pred - f) / f:+.1f}% ({100 * (now - f) / f:+.1f}%) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--duration", type=float, default=0.1, help="seconds per model in the staircase runs")
    ap.add_argument("--points", type=int, default=4, help="anchors per axis in ResNet-50's latency table")
    ap.add_argument("--model-duration", type=float, default=5.0, help="seconds per model in the final run")
    ap.add_argument("--cache", type=Path, default=None, help="latency table folder (default: a fresh one)")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-staircase", action="store_true")
    args = ap.parse_args()
    options = TargetOptions(ort=OrtOptions(intra_op_threads=args.threads))
    timing = ProfileOptions(warmup_s=0.2, iterations=10, duration_s=args.duration)
    print(f"ONNX Runtime CPU, {args.threads} thread(s), {time.strftime('%Y-%m-%d')}; fastest run less an empty "
          "call, ms\n")
    if not args.skip_staircase:
        staircase(options, timing)
    if not args.skip_resnet:
        with tempfile.TemporaryDirectory() as tmp:
            resnet50(options, ProfileOptions(warmup_s=0.1, iterations=10, duration_s=0.03), args.points,
                     args.cache or Path(tmp), args.model_duration)


if __name__ == "__main__":
    main()
