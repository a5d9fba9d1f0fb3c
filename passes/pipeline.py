"""The default pruning pipeline, in order."""

from __future__ import annotations

from graphprune.passes.base import Pass
from graphprune.passes.cleanup import Cleanup
from graphprune.passes.group_attributes import RewriteGroupAttributes
from graphprune.passes.shape_constants import RewriteShapeConstants
from graphprune.passes.slice_weights import SliceWeights


def pruning_pipeline(check: bool = True) -> list[Pass]:
    return [SliceWeights(), RewriteShapeConstants(), RewriteGroupAttributes(), Cleanup(check=check)]
