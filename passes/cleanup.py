"""Finish a rewrite: drop stale value_info, remove dead nodes and unused constants (with
onnx-graphsurgeon), re-run shape inference and the full ONNX checker."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphprune.errors import PassError
from graphprune.model_io import run_shape_inference
from graphprune.passes.base import PassResult, PruneContext
from graphprune.tensors import has_external, weightless


class Cleanup:
    name = "cleanup-and-check"

    def __init__(self, check: bool = True) -> None:
        self.check = check

    def __call__(self, ctx: PruneContext) -> PassResult:
        model = ctx.model
        stale = len(model.graph.value_info)
        del model.graph.value_info[:]
        n_nodes, n_init = len(model.graph.node), len(model.graph.initializer)
        if has_external(model) or len(model.graph.initializer) > 256 or model.ByteSize() > 64 << 20:
            _remove_dead(model)  # graphsurgeon would copy every weight in and out (seconds on big models)
        else:
            graph = gs.import_onnx(model)
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            cleaned = gs.export_onnx(graph, do_type_check=False)
            # keep the original model-level metadata and opset imports
            del model.graph.node[:]
            model.graph.node.extend(cleaned.graph.node)
            del model.graph.initializer[:]
            model.graph.initializer.extend(cleaned.graph.initializer)
        run_shape_inference(model)
        details = [
            f"dropped {stale} value_info entries",
            f"nodes {n_nodes} -> {len(model.graph.node)}, constants {n_init} -> {len(model.graph.initializer)}",
        ]
        if self.check:
            try:
                onnx.checker.check_model(weightless(model), full_check=True)
                details.append("onnx.checker (full) passed")
            except onnx.checker.ValidationError as e:
                first = str(e).splitlines()[0]
                inherited = _input_check_failure(ctx.view.model)
                if inherited is None:
                    raise PassError(f"pruned model fails the ONNX checker: {first}") from e
                # the input already fails the full check the same way: not the rewrite's doing
                details.append(f"onnx.checker (full) skipped: the input model already fails it ({inherited})")
        return PassResult(self.name, True, details)


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads and initializers no node uses (graph inputs stay)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    needed.update(_outer_reads(attr))
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)


def _outer_reads(attr: onnx.AttributeProto) -> set[str]:
    graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    names: set[str] = set()
    for sub in graphs:
        for n in sub.node:
            names.update(i for i in n.input if i)
    return names


def _input_check_failure(model: onnx.ModelProto) -> str | None:
    """Why the *input* model fails the full checker, or None if it passes."""
    try:
        onnx.checker.check_model(weightless(model), full_check=True)
    except onnx.checker.ValidationError as e:
        return str(e).splitlines()[0]
    return None
