"""Per-operator channel rules.  Importing this package registers every rule."""

from __future__ import annotations

from graphprune.rules import (  # noqa: F401  (imported for registration)
    concat_split,
    conv,
    elementwise,
    frozen,
    layout,
    linear,
    norm,
    reduce,
    reshape,
    spatial,
)
from graphprune.rules.registry import (
    AnalysisOptions,
    Coupling,
    IndexMap,
    NodeContext,
    Param,
    RuleEntry,
    RuleOutput,
    Space,
    lookup,
    register,
    registered,
)

__all__ = [
    "AnalysisOptions", "Coupling", "IndexMap", "NodeContext", "Param", "RuleEntry", "RuleOutput",
    "Space", "lookup", "register", "registered",
]
