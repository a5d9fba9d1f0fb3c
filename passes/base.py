"""Pass framework: small rewrites that say what they changed, run as an explicit pipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from graphprune.errors import GraphpruneError, PassError
from graphprune.graph import GraphView
from graphprune.rules import Space
from graphprune.tensors import ScratchWriter

log = logging.getLogger(__name__)


@dataclass
class PruneContext:
    """What the pruning passes share: the model being rewritten and the channels to keep.

    ``keep[space]`` holds the sorted surviving indices of every pruned channel space (weights and
    activations alike); ``view`` indexes the model *before* any rewrite.
    """

    model: onnx.ModelProto
    view: GraphView
    keep: dict[Space, np.ndarray]
    # where rewritten external-data weights go (models whose weights live in external files)
    scratch: ScratchWriter | None = None

    def kept(self, tensor: str, axis: int) -> np.ndarray | None:
        return self.keep.get(Space(tensor, axis))

    def new_dim(self, tensor: str, axis: int) -> int | None:
        """Size of ``tensor``'s axis after pruning (None if it is unknown)."""
        k = self.kept(tensor, axis)
        if k is not None:
            return len(k)
        return self.view.static_dim(tensor, axis)

    def pruned_axes(self, tensor: str) -> dict[int, np.ndarray]:
        return {s.axis: k for s, k in self.keep.items() if s.tensor == tensor}


@dataclass
class PassResult:
    name: str
    modified: bool
    details: list[str] = field(default_factory=list)


class Pass(Protocol):
    name: str

    def __call__(self, ctx: PruneContext) -> PassResult: ...


def run_pipeline(passes: Sequence[Pass], ctx: PruneContext) -> list[PassResult]:
    """Run passes in order; a failure names the pass and its position."""
    results = []
    for k, p in enumerate(passes):
        try:
            res = p(ctx)
        except GraphpruneError as e:
            raise PassError(f"pass {k + 1}/{len(passes)} '{p.name}' failed: {e}") from e
        except Exception as e:
            raise PassError(f"pass {k + 1}/{len(passes)} '{p.name}' failed: {type(e).__name__}: {e}") from e
        log.info("pass %s: %s", p.name, "; ".join(res.details[:5]) or "no change")
        results.append(res)
    return results
