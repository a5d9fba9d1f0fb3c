"""Build and profile backends (shipped as ``graphprune.targets``).

``get_target(name)`` returns a :class:`Target`; its ``build`` makes an :class:`Engine`, its ``profile``
times engines on this machine or on a device reached over ssh (:class:`SshExecutor`).  Importing this
package imports no runtime library: ONNX Runtime and TensorRT are imported by the runner that does the work.
"""

from __future__ import annotations

if __name__ != "graphprune.targets":  # pragma: no cover - guard against a second module object
    raise ImportError("import this package as graphprune.targets, not as top-level 'targets'")

from graphprune.targets.base import (  # noqa: E402
    Engine,
    OrtOptions,
    ProfileOptions,
    Target,
    TargetOptions,
    TrtOptions,
)
from graphprune.targets.executor import Executor, LocalExecutor  # noqa: E402
from graphprune.targets.registry import get_target, names  # noqa: E402
from graphprune.targets.remote import SshExecutor, SshOptions  # noqa: E402
from graphprune.targets.report import ProfileReport  # noqa: E402
from graphprune.targets.stats import LatencyStats  # noqa: E402

__all__ = [
    "Engine", "Executor", "LatencyStats", "LocalExecutor", "OrtOptions", "ProfileOptions", "ProfileReport",
    "SshExecutor", "SshOptions", "Target", "TargetOptions", "TrtOptions", "get_target", "names",
]
