"""Fixtures for the targets tests: small ONNX models built in code, the zoo, a real OpenSSH server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
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


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, m in {"dense": conv_model(16), "pruned": conv_model(8), "dynamic": conv_model(8, batch="N"),
                    "det": det_model(), "resize": resize_model()}.items():
        out[name] = d / f"{name}.onnx"
        onnx.save(m, out[name])
    return out


# ---------------------------------------------------------------------------------------------- sshd
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "graphprune-test", "-f", str(path)],
                   check=True, capture_output=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 (random port) for the current user, keys made for the test."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")
    root = tmp_path_factory.mktemp("sshd")
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    shutil.copy(user_key.with_suffix(".pub"), root / "authorized_keys")
    port = _free_port()
    user = os.environ.get("USER") or __import__("getpass").getuser()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50",
    ]) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # Debian's privilege-separation folder
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "sshd.log", "wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
    known = root / "known_hosts"
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    try:
        yield SshServer(port=port, user=user, identity=user_key, known_hosts=known, root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
