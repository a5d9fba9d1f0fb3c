"""graphprune: structured channel pruning at the ONNX graph level.

Python API (mirrors the CLI)::

    import graphprune
    a = graphprune.analyze("model.onnx")           # coupled channel groups
    r = graphprune.shrink("model.onnx", ratio=0.5)  # prune, prove, save
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["analyze", "apply_plan", "load_model", "shrink", "slice_state_dict", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: keep `import graphprune` cheap for the CLI
    if name == "analyze":
        from graphprune.analysis import analyze

        return analyze
    if name in ("shrink", "apply_plan"):
        import importlib

        return getattr(importlib.import_module("graphprune.pruner"), name)
    if name == "load_model":
        from graphprune.model_io import load_model

        return load_model
    if name == "slice_state_dict":
        from graphprune.plan import slice_state_dict

        return slice_state_dict
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")
