"""Element-wise operators: unary activations, broadcasting binary/variadic ops, PRelu, Clip, Where."""

from __future__ import annotations

from graphprune.rules.broadcast import elementwise
from graphprune.rules.registry import NodeContext, RuleOutput, register

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh",
    "Acosh", "Atanh", "Not", "Identity", "Cast", "Mish", "ThresholdedRelu", "Shrink", "IsNaN",
    "IsInf", "BitwiseNot", "Swish",
)
BINARY = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)
VARIADIC = ("Sum", "Mean", "Max", "Min")


@register(*UNARY)
def unary(ctx: NodeContext) -> RuleOutput:
    """Element-wise: every axis passes through unchanged."""
    return elementwise(ctx, ctx.inputs[:1], ctx.outputs[:1])


@register(*BINARY, *VARIADIC)
def broadcasting(ctx: NodeContext) -> RuleOutput:
    """Channels tie across all operands that carry them; size-1 broadcasts and constants tie nothing."""
    return elementwise(ctx, ctx.inputs, ctx.outputs[:1])


@register("Where")
def where(ctx: NodeContext) -> RuleOutput:
    """Element-wise over condition and both branches, with broadcasting."""
    return elementwise(ctx, ctx.inputs, ctx.outputs[:1])


@register("PRelu")
def prelu(ctx: NodeContext) -> RuleOutput:
    """Slope broadcasts to the input (per-channel slope becomes a sliced constant)."""
    return elementwise(ctx, ctx.inputs, ctx.outputs[:1])


@register("Clip")
def clip(ctx: NodeContext) -> RuleOutput:
    """min/max are scalars (inputs since opset 11)."""
    res = elementwise(ctx, ctx.inputs[:1], ctx.outputs[:1])
    for bound in ctx.inputs[1:]:
        if bound:
            res.absorbs.extend(ctx.all_spaces(bound))
    return res


@register("CastLike")
def cast_like(ctx: NodeContext) -> RuleOutput:
    """Like Cast; the type source is absorbed."""
    res = elementwise(ctx, ctx.inputs[:1], ctx.outputs[:1])
    res.absorbs.extend(ctx.all_spaces(ctx.input(1)))
    return res


@register("Dropout")
def dropout(ctx: NodeContext) -> RuleOutput:
    """Inference Dropout is identity; its optional mask output has the input's shape."""
    res = elementwise(ctx, ctx.inputs[:1], [o for o in ctx.outputs if o])
    for extra in ctx.inputs[1:]:  # ratio, training_mode scalars
        if extra:
            res.absorbs.extend(ctx.all_spaces(extra))
    return res
