"""Train the MNIST benchmark models once and export the small ONNX files committed beside this script.

    python models/mnist/train.py                 # all three (about 10 minutes on 2 CPU cores)
    python models/mnist/train.py --only vit

Writes ``<name>.pt`` (state dict, for Torch-Pruning), ``<name>.onnx`` (legacy exporter, opset 17,
eval mode: BatchNorm folded into Conv, as PyTorch exports usually are) and, for the CNNs,
``<name>_bn.onnx`` (BatchNormalization nodes kept, for the ``bn-prior`` statistics).  Needs the
``bench`` extra (torch, mlxtend).  Seeds and the data split are fixed.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `models` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.mnist.data import load_split  # noqa: E402
from models.mnist.nets import build  # noqa: E402

HERE = Path(__file__).resolve().parent
EPOCHS = {"resnet": 12, "mobilenetv2": 20, "vit": 60}
LR = {"resnet": 2e-3, "mobilenetv2": 3e-3, "vit": 1e-3}
SEED = 0


def _shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (background value = the batch minimum)."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (pad,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(28)[None, :])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.zeros(1, dtype=torch.long)[None, :, None, None],
                  rows, cols]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def train(name: str, epochs: int | None = None) -> nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    xtr, ytr, xte, yte = load_split()
    model = build(name)
    epochs = epochs or EPOCHS[name]
    opt = torch.optim.AdamW(model.parameters(), lr=LR[name], weight_decay=0.05 if name == "vit" else 1e-4)
    steps = epochs * ((len(ytr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR[name], total_steps=steps, pct_start=0.15)
    x_all, y_all = torch.from_numpy(xtr), torch.from_numpy(ytr)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(_shift(x_all[idx], gen)), y_all[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if ep % 5 == 4 or ep == epochs - 1:
            print(f"{name} epoch {ep + 1}/{epochs} loss {loss.item():.3f} test {accuracy(model, xte, yte):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def export(model: nn.Module, path: Path, keep_bn: bool = False) -> None:
    x = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=list(EPOCHS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.only:
        model = train(name, args.epochs)
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / f"{name}.pt")
        export(model, args.out / f"{name}.onnx")
        if name != "vit":
            export(model, args.out / f"{name}_bn.onnx", keep_bn=True)
        print(f"{name}: wrote {args.out}/{name}.*", flush=True)


if __name__ == "__main__":
    main()
