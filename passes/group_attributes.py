"""Rewrite attributes that count channels: depthwise ``group`` on Conv/ConvTranspose and
``num_groups`` on GroupNormalization."""

from __future__ import annotations

import onnx

from graphprune.passes.base import PassResult, PruneContext


def _set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


class RewriteGroupAttributes:
    name = "rewrite-group-attributes"

    def __call__(self, ctx: PruneContext) -> PassResult:
        details = []
        view = ctx.view
        for i, node in enumerate(ctx.model.graph.node):
            if node.op_type in ("Conv", "ConvTranspose"):
                group = int(view.attr(i, "group", 1))
                x, w = node.input[0], node.input[1]
                cin = view.static_dim(w, 0) if node.op_type == "ConvTranspose" else (
                    (view.static_dim(w, 1) or 0) * group)
                if group > 1 and group == cin and ctx.kept(x, 1) is not None:
                    new = len(ctx.kept(x, 1))
                    if new != group:
                        _set_int(node, "group", new)
                        details.append(f"{node.op_type} '{view.node_names[i]}': group {group} -> {new}")
            elif node.op_type == "GroupNormalization":
                x = node.input[0]
                kept = ctx.kept(x, 1)
                if kept is None:
                    continue
                groups = int(view.attr(i, "num_groups", 1))
                c = view.static_dim(x, 1) or groups
                new = len(kept) // (c // groups)
                if new != groups:
                    _set_int(node, "num_groups", new)
                    details.append(f"GroupNormalization '{view.node_names[i]}': num_groups {groups} -> {new}")
        return PassResult(self.name, bool(details), details)
