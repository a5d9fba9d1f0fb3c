"""Targets by name.  Registering imports only light modules: each target loads its library lazily."""

from __future__ import annotations

from collections.abc import Callable

from graphprune.errors import InternalError, UsageError
from graphprune.targets.base import Target

_REGISTRY: dict[str, Callable[[], Target]] = {}


def register(name: str, factory: Callable[[], Target]) -> None:
    """Add a target; a second registration of a name is a bug (caught at import time)."""
    if name in _REGISTRY:
        raise InternalError(f"target {name!r} registered twice")
    _REGISTRY[name] = factory


def names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_target(name: str) -> Target:
    """The target called ``name``; a UsageError listing the known names otherwise."""
    _ensure_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; known targets: {', '.join(sorted(_REGISTRY))} "
                         "(see 'graphprune targets')") from None
    return factory()


def _ensure_builtin() -> None:
    if _REGISTRY:
        return
    from graphprune.targets.ort import OrtCpu, OrtCuda, OrtTensorRT
    from graphprune.targets.tensorrt import TensorRT, TensorRTRtx

    for cls in (OrtCpu, OrtCuda, OrtTensorRT, TensorRT, TensorRTRtx):
        register(cls.name, cls)
