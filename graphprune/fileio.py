"""Atomic writes for reports and plans (temp file in the same folder, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from graphprune.errors import GraphpruneError, UsageError


def check_output_dir(dest: Path) -> None:
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"output folder {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder {parent} is not writable")
    if dest.is_dir():
        raise UsageError(f"output path {dest} is a directory")


def write_text_atomic(dest: Path, text: str) -> Path:
    """Write ``text`` to ``dest`` atomically.  A failed write (disk full, I/O error) leaves nothing behind
    and is a runtime error (exit 1), not a usage error: the options were fine, the disk was not."""
    check_output_dir(dest)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent if str(dest.parent) else ".")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, dest)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise GraphpruneError(f"cannot write {dest}: {e.strerror or e}") from e
    return dest
