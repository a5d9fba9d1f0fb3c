"""The built wheel installs in a fresh venv and every module imports (package-dir mapping works)."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_imports_every_module(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True, timeout=600)
    (wheel,) = dist.glob("graphprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    expected = {f"graphprune/passes/{p.name}" for p in (ROOT / "passes").glob("*.py")}
    expected |= {f"graphprune/targets/{p.name}" for p in (ROOT / "targets").glob("*.py")}
    assert expected <= set(names)
    assert not any(n.startswith(("passes/", "targets/")) for n in names)
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    # dependencies come from this environment's site-packages (no network); graphprune only from the wheel
    import sysconfig

    deps = sysconfig.get_paths()["purelib"]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(deps + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=600)
    mods = sorted({n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                   if n.endswith(".py") and n.startswith("graphprune/") and not n.endswith("__main__.py")})
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nimport graphprune\n" \
           "assert 'site-packages' in graphprune.__file__, graphprune.__file__\n"
    subprocess.run([str(py), "-c", code, *mods], check=True, cwd=tmp_path, timeout=300)
    out = subprocess.run([str(env / "bin" / "graphprune"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "graphprune" in out.stdout


def test_top_level_passes_import_is_refused():
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import passes"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0 and "graphprune.passes" in p.stderr
