"""Graph rewrite passes (shipped as ``graphprune.passes``)."""

from __future__ import annotations

if __name__ != "graphprune.passes":  # pragma: no cover - guard against a second module object
    raise ImportError("import this package as graphprune.passes, not as top-level 'passes'")
