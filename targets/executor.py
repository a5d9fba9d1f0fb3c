"""Where jobs run: this machine (a child process) or a device over ssh (:mod:`graphprune.targets.remote`).

Both run the same self-contained runner script, made by :func:`runner_source` from ``runner.py`` and
``runner_trt.py``, and get the same JSON back; the host turns runner errors into typed graphprune errors.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from graphprune.errors import GraphpruneError, ModelLoadError, TargetError, TargetUnavailableError, UsageError
from graphprune.targets.runner import RESULT_MARK

log = logging.getLogger(__name__)

_DROP_BEGIN = "# --- bundle: drop from here"
_DROP_END = "# --- bundle: drop to here ---"
_MAIN = "# --- bundle: main ---"
_KINDS: dict[str, type[GraphpruneError]] = {
    "unavailable": TargetUnavailableError, "usage": UsageError, "model": ModelLoadError, "target": TargetError,
}


@functools.lru_cache(maxsize=1)
def runner_source() -> str:
    """The one script shipped to devices: runner.py, then runner_ort.py and runner_trt.py without their
    import blocks (runner.py defines those names), then runner.py's ``__main__`` guard."""
    here = Path(__file__).resolve().parent
    core = (here / "runner.py").read_text(encoding="utf-8")
    head, main = core.split(_MAIN)
    parts = [head]
    for name in ("runner_ort.py", "runner_trt.py"):
        text = (here / name).read_text(encoding="utf-8")
        doc = text[: text.index(_DROP_BEGIN)].replace("from __future__ import annotations", "")
        parts.append(f"\n# {'=' * 40} {name}\n{doc}{text[text.index(_DROP_END) + len(_DROP_END):]}")
    return "".join(parts) + f"\n{_MAIN}{main}"


def error_from_runner(err: dict[str, Any], where: str) -> GraphpruneError:
    cls = _KINDS.get(str(err.get("kind")), TargetError)
    msg = str(err.get("message") or "unknown runner error")
    return cls(msg if where == "local" else f"{where}: {msg}")


def parse_runner_output(stdout: str, stderr: str, returncode: int, where: str, python: str) -> dict[str, Any]:
    """The runner's result payload, or the typed error it (or its absence) stands for."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                payload: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            except json.JSONDecodeError as e:
                raise TargetError(f"{where}: runner output is not valid JSON ({e})") from e
            if not payload.get("ok"):
                raise error_from_runner(payload.get("error") or {}, where)
            return payload
    tail = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    if returncode in (126, 127):
        raise TargetUnavailableError(f"{where}: cannot start the runner with '{python}' ({tail}); pass "
                                     "--remote-python with the device's Python 3")
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        raise TargetError(f"{where}: the runner crashed ({sig}) ({tail})")
    raise TargetError(f"{where}: the runner exited with status {returncode} and no result ({tail})")


class Executor(abc.ABC):
    """Runs runner jobs somewhere; paths in jobs are paths on that machine."""

    location: str
    python: str

    def __init__(self) -> None:
        self.transfers: dict[str, list[str]] = {"uploaded": [], "cached": []}
        self._facts: dict[str, Any] | None = None

    @property
    def is_local(self) -> bool:
        return self.location == "local"

    @abc.abstractmethod
    def stage(self, paths: list[Path]) -> list[str]:
        """Make local files readable by the runner; returns their paths there."""

    @abc.abstractmethod
    def scratch(self) -> str:
        """A fresh folder path there for build outputs (the runner creates it and removes it)."""

    @abc.abstractmethod
    def run(self, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run one job; returns the payload or raises a GraphpruneError."""

    @abc.abstractmethod
    def fetch(self, path: str, dest: Path) -> None:
        """Copy a runner output back to ``dest`` (atomically)."""

    def facts(self) -> dict[str, Any]:
        """Device facts and availability (one runner call, cached)."""
        if self._facts is None:
            self._facts = self.run({"op": "facts"})
        return self._facts


class LocalExecutor(Executor):
    """This machine: the runner in a child process of this Python (same venv)."""

    def __init__(self, python: str | None = None) -> None:
        super().__init__()
        self.location = "local"
        self.python = python or sys.executable

    def stage(self, paths: list[Path]) -> list[str]:
        return [str(Path(p).resolve()) for p in paths]

    def scratch(self) -> str:
        return tempfile.mkdtemp(prefix="graphprune-build-")

    def run(self, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        job = {"protocol": 1, **job}
        with tempfile.TemporaryDirectory(prefix="graphprune-run-") as cwd:
            try:
                proc = subprocess.run(
                    [self.python, "-c", runner_source()], input=json.dumps(job), capture_output=True,
                    text=True, cwd=cwd, timeout=timeout, check=False,
                )
            except subprocess.TimeoutExpired as e:
                raise TargetError(f"the runner took longer than {timeout:.0f} s; stopped") from e
            except OSError as e:
                raise TargetUnavailableError(f"cannot start {self.python}: {e.strerror or e}") from e
        for line in proc.stderr.splitlines():
            log.info("runner: %s", line)
        return parse_runner_output(proc.stdout, proc.stderr, proc.returncode, self.location, self.python)

    def fetch(self, path: str, dest: Path) -> None:
        move_into_place(Path(path), dest)


def file_mode() -> int:
    """0o666 less the process umask: what a plain open() would give (mkstemp gives 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def move_into_place(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` atomically (via a temporary name in dest's folder)."""
    parent = dest.parent
    if not parent.is_dir():
        raise UsageError(f"output folder {parent} does not exist")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        shutil.move(str(src), tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, dest)
    except OSError as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise TargetError(f"cannot write {dest}: {e.strerror or e}") from e
