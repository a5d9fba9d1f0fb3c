"""Helpers for the targets tests: the CLI runner, small ONNX models built in code, ssh key tools.

(Named uniquely, not ``conftest``, so test modules can import it whatever other conftest files appear.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import cli

REPO = Path(__file__).resolve().parents[2]
ZOO = sorted((REPO / "models" / "zoo").glob("*.onnx"))
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)


def run_cli(*args: str | os.PathLike[str]) -> Result:
    """Invoke ``graphprune`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result: Result) -> str:
    """The one ``Error: ...`` line; fails if there is none or more than one."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto], opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "test", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def conv_model(channels: int = 8, batch: int | str = 1, size: int = 32) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GAP-Flatten-Gemm: the shape of a small pruned/dense classifier."""
    rng = np.random.default_rng(channels)
    c = channels
    inits = [
        numpy_helper.from_array((rng.standard_normal((c, 3, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(c, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((10, c)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)


def det_model() -> onnx.ModelProto:
    """Valid ONNX (ORT runs it) with an op the TensorRT parser rejects: Det."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"), helper.make_node("Det", ["r"], ["y"], name="odd_det")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [])


def resize_model() -> onnx.ModelProto:
    """Conv, Resize with float32 scales, shape arithmetic in float, Constant: the fp16 pass's hard cases."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Resize", ["c", "", "scales"], ["up"], mode="nearest", name="resize"),
        helper.make_node("Shape", ["up"], ["shp"], name="shape"),
        helper.make_node("Cast", ["shp"], ["shp_f"], to=TensorProto.FLOAT, name="cast_f"),
        helper.make_node("Constant", [], ["two"], value_float=2.0, name="two"),
        helper.make_node("Div", ["shp_f", "two"], ["half"], name="div"),
        helper.make_node("Cast", ["half"], ["half_i"], to=TensorProto.INT64, name="cast_i"),
        helper.make_node("ReduceMean", ["up"], ["m"], axes=[2, 3], keepdims=0, name="mean"),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, np.float32)), name="k"),
        helper.make_node("Mul", ["m", "k"], ["y"], name="mul"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                   helper.make_tensor_value_info("half_i", TensorProto.INT64, [4])], inits, opset=17)


@dataclass
class SshServer:
    port: int
    user: str
    identity: Path
    known_hosts: Path
    root: Path

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def device_args(self, *, remote_cache: Path | None = None) -> list[str]:
        """CLI options reaching this server with the venv's python and a private cache folder."""
        import sys

        return ["--device", self.url, "--identity", str(self.identity), "--known-hosts", str(self.known_hosts),
                "--remote-python", sys.executable, "--remote-cache", str(remote_cache or self.root / "cache")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "graphprune-test", "-f", str(path)],
                   check=True, capture_output=True)
