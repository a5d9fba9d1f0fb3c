"""Build and profile backends (shipped as ``graphprune.targets``)."""

from __future__ import annotations

if __name__ != "graphprune.targets":  # pragma: no cover - guard against a second module object
    raise ImportError("import this package as graphprune.targets, not as top-level 'targets'")
