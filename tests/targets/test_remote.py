"""Remote devices through a real OpenSSH server on loopback: same schema, cache, hostile names, keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from target_helpers import SshServer, error_line, free_port, keygen, run_cli

FAST = ["--warmup", "0", "--iterations", "2", "--duration", "0"]
HOSTILE = ["a b.onnx", "it's \"quoted\".onnx", "$(touch pwned).onnx", "semi;colon && echo x.onnx",
           "new\nline.onnx", "-o.onnx", "`touch pwned2`.onnx"]


def _keys(d: Any) -> Any:
    """The shape of a JSON document: keys, recursively (first element of lists)."""
    if isinstance(d, dict):
        return {k: _keys(v) for k, v in d.items() if k not in ("facts",)}
    if isinstance(d, list) and d and isinstance(d[0], dict):
        return [_keys(d[0])]
    return None


def _profile(sshd: SshServer, model: Path, out: Path, *extra: str) -> dict[str, Any]:
    r = run_cli("profile", model, "-t", "ort-cpu", *FAST, "--json", out, *sshd.device_args(), *extra)
    assert r.exit_code == 0, r.stderr
    return json.loads(out.read_text())


def test_remote_profile_matches_local_schema_and_caches(sshd: SshServer, models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    cache = tmp_path / "remote-cache"
    args = sshd.device_args(remote_cache=cache)
    first = tmp_path / "r1.json"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--json", first, *args)
    assert r.exit_code == 0, r.stderr
    remote = json.loads(first.read_text())
    local_path = tmp_path / "l.json"
    assert run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--json", local_path).exit_code == 0
    local = json.loads(local_path.read_text())
    remote_shape, local_shape = _keys(remote), _keys(local)
    remote_shape.pop("transfers")
    local_shape.pop("transfers")
    assert remote_shape == local_shape
    assert remote["device"]["location"] == sshd.url
    assert {"cpu_model", "cpu_count"} <= set(remote["device"]["facts"])
    assert len(remote["transfers"]["uploaded"]) == 2  # runner script + model, by content hash
    blobs = sorted(p.name for p in (cache / "blobs").iterdir())
    assert blobs == sorted(remote["transfers"]["uploaded"])
    assert not any((cache / "out").iterdir())
    second = tmp_path / "r2.json"
    assert run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, "--json", second, *args).exit_code == 0
    t = json.loads(second.read_text())["transfers"]
    assert t["uploaded"] == [] and sorted(t["cached"]) == blobs


def test_hostile_file_names_are_inert(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "we ird;$(touch pwned)"
    work.mkdir()
    for name in HOSTILE:
        shutil.copy(models["pruned"], work / name)
    for i in range(0, len(HOSTILE), 2):  # two at a time: --compare ships both
        pair = HOSTILE[i: i + 2]
        extra = ["--compare", str(work / pair[1])] if len(pair) > 1 else []
        data = _profile(sshd, work / pair[0], work / f"out {i}.json", *extra)
        assert [r["name"] for r in data["runs"]] == pair
    ort_out = work / "$(touch pwned) out.ort"
    r = run_cli("build", work / HOSTILE[2], "-t", "ort-cpu", "-o", ort_out, *sshd.device_args())
    assert r.exit_code == 0, r.stderr
    assert ort_out.is_file() and (work / "$(touch pwned) out.optimized.onnx").is_file()
    for where in (Path.cwd(), tmp_path, work, sshd.root, Path.home()):
        assert not list(where.glob("pwned*")), where


@pytest.mark.parametrize("cache", ["/tmp/$(touch pwned)", "~/../etc", "a b"])
def test_hostile_remote_cache_is_refused(sshd: SshServer, models: dict[str, Path], cache: str) -> None:
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *sshd.device_args()[:-2], "--remote-cache", cache)
    assert r.exit_code == 2 and "--remote-cache" in error_line(r)


def test_unknown_host_key_is_refused_unless_opted_in(sshd: SshServer, models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    empty = tmp_path / "known hosts %d"  # a space and a %-token: quoted and escaped for ssh
    empty.write_text("")
    args = sshd.device_args()
    args[args.index("--known-hosts") + 1] = str(empty)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args)
    assert r.exit_code == 1
    assert "host key is not in known_hosts" in error_line(r)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args, "--insecure-accept-new-host-key")
    assert r.exit_code == 0, r.stderr
    host_key = (sshd.root / "host_ed25519.pub").read_text().split()[1]
    assert host_key in empty.read_text()  # recorded (hashed host name: Debian's HashKnownHosts)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args)
    assert r.exit_code == 0, r.stderr  # and now trusted without the opt-in


def test_changed_host_key_is_refused_even_with_opt_in(sshd: SshServer, models: dict[str, Path],
                                                      tmp_path: Path) -> None:
    other = tmp_path / "other"
    keygen(other)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n")
    args = sshd.device_args()
    args[args.index("--known-hosts") + 1] = str(kh)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args, "--insecure-accept-new-host-key")
    assert r.exit_code == 1 and "does not match known_hosts" in error_line(r)


def test_wrong_user_key_and_unreachable_port(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    keygen(wrong)
    args = sshd.device_args()
    args[args.index("--identity") + 1] = str(wrong)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args)
    assert r.exit_code == 1 and "authentication failed" in error_line(r)
    args = sshd.device_args()
    args[args.index("--device") + 1] = f"ssh://{sshd.user}@127.0.0.1:{free_port()}"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args)
    assert r.exit_code == 1 and "cannot reach ssh://" in error_line(r)
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", "--device", "ssh://-oProxyCommand=x@h")
    assert r.exit_code == 2 and "expected ssh://" in error_line(r)


def test_missing_remote_python(sshd: SshServer, models: dict[str, Path]) -> None:
    args = sshd.device_args()
    args[args.index("--remote-python") + 1] = "/nonexistent/python3"
    r = run_cli("profile", models["dense"], "-t", "ort-cpu", *FAST, *args)
    assert r.exit_code == 1 and "cannot start the runner" in error_line(r)


def test_targets_on_device(sshd: SshServer) -> None:
    args = [a for a in sshd.device_args() if a]
    keep = args[: args.index("--remote-cache") + 2]
    r = run_cli("targets", "--json", *keep)
    assert r.exit_code == 0, r.stderr
    rows = {t["name"]: t["available"] for t in json.loads(r.stdout)["targets"]}
    assert rows["ort-cpu"] is True and json.loads(r.stdout)["location"] == sshd.url


@pytest.mark.skipif(bool(subprocess.run([sys.executable, "-c", "import tensorrt_rtx"], capture_output=True).returncode),
                    reason="tensorrt_rtx cannot be imported")
def test_remote_tensorrt_rtx_build_is_fetched_and_stays_cached(sshd: SshServer, models: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "rc"
    eng = tmp_path / "remote build.engine"
    tc = tmp_path / "timing cache"
    args = sshd.device_args(remote_cache=cache)
    r = run_cli("build", models["dense"], "-t", "tensorrt-rtx", "-o", eng, "--timing-cache", tc, *args)
    assert r.exit_code == 0, r.stderr
    rep = json.loads(eng.with_name(eng.name + ".json").read_text())
    assert rep["device"]["location"] == sshd.url and eng.stat().st_size == rep["outputs"]["engine"]["bytes"]
    assert tc.is_file() and tc.stat().st_size > 0
    assert (cache / "blobs" / (rep["outputs"]["engine"]["sha256"] + ".engine")).is_file()
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "" and Path("/dev/nvidia0").exists():
        return  # a GPU here: profiling would run; not what this test checks
    r = run_cli("profile", eng, "-t", "tensorrt-rtx", *FAST, *args)
    assert r.exit_code == 1
    assert error_line(r).startswith(f"Error: {sshd.url}: no CUDA GPU")
