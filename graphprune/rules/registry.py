"""The channel-rule registry and the data a rule returns.

A rule is a small function ``rule(ctx) -> RuleOutput`` registered for (domain, op_type, opset range).
It states, for one node, which channel spaces (tensor, axis) are coupled and how their indices map,
which weight axes are parameters (producer outputs or consumer inputs), which spaces it knowingly
ends ("absorbs"), and which it must freeze or mark lossy.  A live space on a node's tensors that the
rule does not mention is frozen by the analysis: rules fail closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from graphprune.errors import InternalError
from graphprune.graph import GraphView, Shape

ParamRole = Literal["out", "in", "affine", "const"]


@dataclass(frozen=True, order=True)
class Space:
    """One axis of one tensor: a space of channels.  Virtual spaces start with '@'."""

    tensor: str
    axis: int

    @property
    def virtual(self) -> bool:
        return self.tensor.startswith("@")

    def __str__(self) -> str:
        return f"{self.tensor}[{self.axis}]"


@dataclass(frozen=True)
class IndexMap:
    """How index ``i`` of space *a* relates to indices of space *b*.

    ``factor``: a is one factor of b's axis: ``b = o*(na*inner) + i*inner + r`` for all o < outer,
    r < inner (identity is outer=inner=1; a Flatten of channels is inner=H*W; a channels-last
    flatten is outer=H*W).  ``offset``: ``b = i + k`` (Concat inputs, Split/Slice outputs).
    ``modulo``: ``b = i % k`` (grouped-conv input channels onto the weight's per-group axis).
    ``table``: explicit pairs, for anything else.
    """

    kind: Literal["factor", "offset", "modulo", "table"]
    outer: int = 1
    inner: int = 1
    k: int = 0
    ia: tuple[int, ...] = ()
    ib: tuple[int, ...] = ()

    def pairs(self, na: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "factor":
            if na * self.outer * self.inner != nb:
                raise InternalError(f"factor map {self} does not fit sizes {na} -> {nb}")
            o, i, r = np.meshgrid(
                np.arange(self.outer), np.arange(na), np.arange(self.inner), indexing="ij"
            )
            ib = o * (na * self.inner) + i * self.inner + r
            return i.ravel(), ib.ravel()
        if self.kind == "offset":
            ia = np.arange(na)
            if self.k < 0 or self.k + na > nb:
                raise InternalError(f"offset map {self} does not fit sizes {na} -> {nb}")
            return ia, ia + self.k
        if self.kind == "modulo":
            ia = np.arange(na)
            if self.k != nb or na % nb:
                raise InternalError(f"modulo map {self} does not fit sizes {na} -> {nb}")
            return ia, ia % self.k
        return np.asarray(self.ia, dtype=np.int64), np.asarray(self.ib, dtype=np.int64)

    def describe(self) -> str:
        if self.kind == "factor":
            if self.outer == 1 and self.inner == 1:
                return "identity"
            return f"factor(outer={self.outer}, inner={self.inner})"
        if self.kind == "offset":
            return f"offset({self.k})"
        if self.kind == "modulo":
            return f"modulo({self.k})"
        return f"table({len(self.ia)} pairs)"


IDENTITY = IndexMap("factor")


def block(inner: int) -> IndexMap:
    """Channel i of a becomes the contiguous block [i*inner, (i+1)*inner) of b."""
    return IndexMap("factor", inner=inner)


def tiled(outer: int, inner: int = 1) -> IndexMap:
    return IndexMap("factor", outer=outer, inner=inner)


def offset(k: int) -> IndexMap:
    return IndexMap("offset", k=k)


def modulo(k: int) -> IndexMap:
    return IndexMap("modulo", k=k)


@dataclass(frozen=True)
class Coupling:
    a: Space
    b: Space
    map: IndexMap = IDENTITY
    # couplings sharing an ``exclusive`` key at one node are alternatives: only one may be live.
    exclusive: str | None = None


@dataclass(frozen=True)
class Param:
    """A weight axis whose slices belong to the channels of its space."""

    space: Space
    role: ParamRole
    node: int  # index of the node that uses it this way


@dataclass
class RuleOutput:
    couplings: list[Coupling] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    absorbs: list[Space] = field(default_factory=list)
    freezes: list[tuple[Space | str, str]] = field(default_factory=list)  # str: whole tensor
    lossy: list[tuple[Space, str]] = field(default_factory=list)
    # what a space is, where a rule can tell: "heads" (a batch axis of an activation x activation
    # MatMul: attention heads) or "head-dim" (its contraction axis)
    tags: list[tuple[Space, str]] = field(default_factory=list)

    def couple(self, a: Space, b: Space, m: IndexMap = IDENTITY, exclusive: str | None = None) -> None:
        self.couplings.append(Coupling(a, b, m, exclusive))

    def mentioned(self) -> set[Space]:
        out: set[Space] = set()
        for c in self.couplings:
            out.add(c.a)
            out.add(c.b)
        out.update(p.space for p in self.params)
        out.update(self.absorbs)
        out.update(s for s, _ in self.freezes if isinstance(s, Space))
        out.update(s for s, _ in self.lossy)
        return out


@dataclass
class AnalysisOptions:
    """Choices that change how ambiguous reshapes are read."""

    # When a reshape splits a live axis into (major, minor) factors, e.g. hidden -> (heads, head_dim):
    # "heads" couples the major factor (prune whole heads), "head-dim" the minor one.
    split_preference: Literal["heads", "head-dim"] = "heads"


class NodeContext:
    """What a rule sees: one node, the graph view, and which spaces are live so far."""

    def __init__(
        self,
        view: GraphView,
        index: int,
        live: Callable[[Space], bool],
        options: AnalysisOptions,
    ) -> None:
        self.view = view
        self.index = index
        self.node = view.nodes[index]
        self.name = view.node_names[index]
        self.op = self.node.op_type
        self.inputs = list(self.node.input)
        self.outputs = list(self.node.output)
        self.is_live = live
        self.options = options
        # False while the analysis first spreads liveness: rules defer ambiguous choices until
        # every unambiguous coupling has been seen.
        self.defaults_allowed = True

    # helpers ------------------------------------------------------------------------------------
    def attr(self, name: str, default: object = None) -> object:
        return self.view.attr(self.index, name, default)

    def int_attr(self, name: str, default: int) -> int:
        v = self.attr(name, default)
        return int(v)  # type: ignore[call-overload]

    def ints_attr(self, name: str, default: list[int] | None = None) -> list[int] | None:
        v = self.attr(name, None)
        if v is None:
            return default
        return [int(x) for x in v]  # type: ignore[attr-defined]

    def shape(self, name: str) -> Shape | None:
        return self.view.shape(name) if name else None

    def rank(self, name: str) -> int | None:
        return self.view.rank(name) if name else None

    def dim(self, name: str, axis: int) -> int | None:
        return self.view.static_dim(name, axis)

    def const(self, name: str) -> np.ndarray | None:
        """A constant, or a shape value computable from static dims."""
        if not name:
            return None
        v = self.view.small_constant(name)
        return v if v is not None else self.view.known_value(name)

    def is_const(self, name: str) -> bool:
        return bool(name) and self.view.is_constant(name)

    def input(self, i: int) -> str:
        return self.inputs[i] if i < len(self.inputs) else ""

    def space(self, tensor: str, axis: int) -> Space:
        r = self.rank(tensor)
        if axis < 0 and r is not None:
            axis += r
        return Space(tensor, axis)

    def all_spaces(self, tensor: str) -> list[Space]:
        r = self.rank(tensor)
        return [] if r is None else [Space(tensor, a) for a in range(r)]

    def virtual(self, label: str) -> Space:
        return Space(f"@{self.name}:{label}", 0)

    def out(self) -> RuleOutput:
        return RuleOutput()

    def freeze_all(self, reason: str) -> RuleOutput:
        res = RuleOutput()
        for t in self.inputs + self.outputs + self.view.implicit_inputs.get(self.index, []):
            if t:
                res.freezes.append((t, reason))
        return res


Rule = Callable[[NodeContext], RuleOutput]


@dataclass(frozen=True)
class RuleEntry:
    domain: str
    op_type: str
    min_opset: int
    max_opset: int | None
    fn: Rule

    @property
    def qualname(self) -> str:
        return f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}"

    def covers(self, opset: int) -> bool:
        return opset >= self.min_opset and (self.max_opset is None or opset <= self.max_opset)


_REGISTRY: dict[tuple[str, str], list[RuleEntry]] = {}


def register(
    *op_types: str, domain: str = "", opsets: tuple[int, int | None] = (1, None)
) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the channel rule for ``op_types`` over an opset range (inclusive)."""

    def deco(fn: Rule) -> Rule:
        lo, hi = opsets
        for op in op_types:
            entries = _REGISTRY.setdefault((domain, op), [])
            for e in entries:
                overlap = (hi is None or hi >= e.min_opset) and (e.max_opset is None or e.max_opset >= lo)
                if overlap:
                    raise InternalError(
                        f"duplicate channel rule for {domain or 'ai.onnx'}::{op} opsets {opsets}: "
                        f"{e.qualname} already covers {e.min_opset}..{e.max_opset}"
                    )
            entries.append(RuleEntry(domain, op, lo, hi, fn))
        return fn

    return deco


def lookup(domain: str, op_type: str, opset: int) -> RuleEntry | None:
    d = "" if domain == "ai.onnx" else domain
    for e in _REGISTRY.get((d, op_type), []):
        if e.covers(opset):
            return e
    return None


def registered() -> list[RuleEntry]:
    return sorted((e for es in _REGISTRY.values() for e in es), key=lambda e: (e.domain, e.op_type, e.min_opset))
