"""Running the CLI on corpus cases and checking what it left behind.

* :func:`gp` runs ``graphprune`` in-process through :func:`graphprune.cli.main` (the console entry point
  less ``sys.exit``), so monkeypatched guards see every file it opens; :func:`gp_subprocess` runs a real
  process for the cases where only a process boundary proves the point (a hang, the exit status).
* :func:`snapshot` records a folder tree without following links or opening FIFOs, so "inputs
  byte-identical afterwards" and "no partial outputs" are plain dict comparisons.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from graphprune.cli import main

PROFILE_FAST = ("--warmup", "0", "--iterations", "1", "--duration", "0")


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``Error: ...`` line (fails unless stderr holds exactly one line and no traceback)."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        assert len(lines) == 1, f"expected one stderr line, got:\n{self.err}"
        assert lines[0].startswith("Error: "), self.err
        assert "Traceback" not in self.err + self.out, self.err
        return lines[0]


def gp(*args: object) -> Run:
    """``graphprune ARGS`` in this process; returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Run(rc, out.getvalue(), err.getvalue())


def gp_subprocess(*args: object, timeout: float = 120) -> Run:
    p = subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, check=False)
    return Run(p.returncode, p.stdout, p.stderr)


def command_args(cmd: str, model: Path, plan: Path) -> list[object]:
    """Arguments for ``cmd`` on ``model`` with default outputs (beside the model)."""
    return {
        "analyze": ["analyze", model],
        "shrink": ["shrink", model, "--ratio", "0.5"],
        "apply-plan": ["apply-plan", model, plan],
        "build": ["build", model, "-t", "ort-cpu"],
        "profile": ["profile", model, "-t", "ort-cpu", *PROFILE_FAST],
    }[cmd]


def check_outcome(run: Run, code: int, message: str = "") -> None:
    """Exit ``code``; a failure is one typed ``Error:`` line matching ``message`` (never an internal error)."""
    assert run.rc == code, f"exit {run.rc}, expected {code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    if code == 0:
        assert "Error:" not in run.err, run.err
        return
    line = run.error_line()
    assert "internal error" not in line, line
    if message:
        assert re.search(message, line), f"{line!r} does not match {message!r}"


# ------------------------------------------------------------------------------------------- files
Entry = tuple[Any, ...]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (links not followed, FIFOs not opened); big files by size and mtime."""
    out: dict[str, Entry] = {}
    if not root.exists() and not root.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo",)
            elif st.st_size > 64 << 20:  # the sparse >2 GiB case: never read it
                out[rel] = ("big", st.st_size, st.st_mtime_ns)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def temp_leftovers(entries: dict[str, Entry]) -> list[str]:
    return [k for k in entries if Path(k).name.startswith(".") and Path(k).name.endswith(".tmp")]


def assert_untouched(before: dict[str, Entry], after: dict[str, Entry], *, allow_new: bool) -> None:
    """Pre-existing entries are byte-identical; new ones only if ``allow_new``; never temp files."""
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"inputs changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    assert not temp_leftovers(after), f"temporary files left: {temp_leftovers(after)}"
    if not allow_new:
        assert not new, f"partial outputs left: {new}"


# ------------------------------------------------------------------------------------------ guards
@dataclass
class OpenGuard:
    """Records every attempt to open a path under ``forbidden`` (the guard refuses it, too)."""

    forbidden: Path
    attempts: list[str]

    def check(self, path: object) -> None:
        if isinstance(path, int):
            return
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if real == str(self.forbidden) or real.startswith(str(self.forbidden) + os.sep):
            self.attempts.append(real)
            raise PermissionError(errno.EACCES, "opened by a guarded test", real)


@contextlib.contextmanager
def guard_opens(monkeypatch: pytest.MonkeyPatch, forbidden: Path) -> Iterator[OpenGuard]:
    """Patch Python's open functions, ONNX's C++ external-data opener and process creation: nothing may
    read below ``forbidden`` and no runtime process may start (it could open files we cannot see)."""
    guard = OpenGuard(forbidden.resolve(), [])
    real_open, real_os_open = builtins.open, os.open

    def g_open(file: Any, *a: Any, **k: Any) -> Any:
        guard.check(file)
        return real_open(file, *a, **k)

    def g_os_open(path: Any, *a: Any, **k: Any) -> int:
        guard.check(path)
        return real_os_open(path, *a, **k)

    def no_process(*a: Any, **k: Any) -> Any:
        guard.attempts.append(f"process {str(a[0] if a else k.get('args'))[:80]}")
        raise AssertionError("a runtime process was started for a model that must be refused")

    import onnx.external_data_helper as edh

    def g_external(base_dir: str, location: str, *a: Any, **k: Any) -> int:
        guard.check(os.path.join(base_dir, location))
        raise AssertionError(f"external data {location} was opened")

    with monkeypatch.context() as mp:
        mp.setattr(builtins, "open", g_open)
        mp.setattr(io, "open", g_open)
        mp.setattr(os, "open", g_os_open)
        mp.setattr(edh, "_open_external_data_fd", g_external)
        mp.setattr(subprocess, "Popen", no_process)
        yield guard


@contextlib.contextmanager
def disk_full_in_process(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """Simulate ENOSPC for writes below ``folder`` made through Python file objects (``open`` and
    ``os.fdopen``): the portable stand-in for a full tmpfs when mounting is not allowed."""
    folder = folder.resolve()
    real_open, real_fdopen = builtins.open, os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, b: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def writable(self) -> bool:
            return True

        def fileno(self) -> int:
            return int(self.f.fileno())

        def close(self) -> None:
            self.f.close()
            super().close()

    def below(path: Any) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(str(folder) + os.sep)
        except (TypeError, ValueError):
            return False

    def f_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        f = real_open(file, mode, *a, **k)
        return Full(f) if any(c in mode for c in "wax") and below(file) else f

    def f_fdopen(fd: int, mode: str = "r", *a: Any, **k: Any) -> Any:
        f = real_fdopen(fd, mode, *a, **k)
        return Full(f) if any(c in mode for c in "wax") and below(f"/proc/self/fd/{fd}") else f

    with monkeypatch.context() as mp:
        mp.setattr(builtins, "open", f_open)
        mp.setattr(io, "open", f_open)
        mp.setattr(os, "fdopen", f_fdopen)
        yield


# ------------------------------------------------------------------------------------------- mounts
def _run_quiet(args: list[str]) -> bool:
    return subprocess.run(args, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, options: str, fill: bool = False) -> Iterator[Path]:
    """Mount a small tmpfs at ``path`` (root with mount rights only; skips otherwise); ``fill`` writes
    until ENOSPC so that every later write there fails."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _run_quiet(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]):
        pytest.skip("needs root with mount rights for a tmpfs")
    try:
        if fill:
            fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
            finally:
                os.close(fd)
        yield path
    finally:
        _run_quiet(["umount", "-l", str(path)])


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A folder nobody may write: chmod 0o500 for a normal user, a read-only tmpfs for root."""
    if os.geteuid() != 0:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    with tmpfs(path, "ro,size=64k") as p:
        yield p


def files_below(root: Path, pred: Callable[[str], bool] = lambda n: True) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if pred(p.name))
