"""graphprune: structured channel pruning at the ONNX graph level."""

from __future__ import annotations

__version__ = "0.1.0"
