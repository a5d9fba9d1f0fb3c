"""Prune in ONNX, fine-tune in PyTorch: the plan slices a state_dict whose names match the exported
initializers, and the narrow torch model reproduces the pruned ONNX model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphprune
from graphprune.plan import PruningPlan

torch = pytest.importorskip("torch")
nn = torch.nn


class Net(nn.Module):
    def __init__(self, c1: int = 16, c2: int = 24, c3: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.dw = nn.Conv2d(c2, c2, 3, padding=1, groups=c2)
        self.conv3 = nn.Conv2d(c2, c3, 1)
        self.fc = nn.Linear(c3, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(torch.relu(self.dw(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize(m: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)


def test_sliced_state_dict_matches_pruned_onnx(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    _randomize(net)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 12, 12), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      training=torch.onnx.TrainingMode.PRESERVE, dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    plan_path = tmp_path / "plan.json"
    out = tmp_path / "net.pruned.onnx"
    r = graphprune.shrink(str(path), ratio=0.5, output=str(out), plan_path=str(plan_path))
    assert r.verify.passed
    sliced = graphprune.slice_state_dict(net.state_dict(), PruningPlan.load(plan_path))
    widths = (sliced["conv1.weight"].shape[0], sliced["conv2.weight"].shape[0], sliced["conv3.weight"].shape[0])
    assert widths == (8, 12, 8)
    small = Net(*widths).eval()
    small.load_state_dict(sliced)
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        ref = small(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
